"""memory.py: how much GPU memory one rank of a training run needs, worked out before anything is allocated.

train.py shards the model with FSDP2 (`fully_shard` on every block, then on the root): each rank holds
1 / world of the fp32 master weights, of their fp32 gradients and of AdamW's two fp32 states; on CUDA a
block's parameters are all-gathered in bf16 just before it runs (MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)) and freed after. What does not shard is what one micro-batch keeps for the backward
pass: the activations of every block (or only the block inputs with activation checkpointing) and the
(B, T, V) logits around the loss. `plan_memory` adds these up per rank:

    params + grads + AdamW  = 4 + 4 + 8 bytes per parameter / world          (model + NITP projector)
    unsharded_peak          = compute_bytes x (root group + projector + 2 x largest block)
    activations             = sum of per-block activations (block_activation_bytes) + the head's
    logits                  = C V x (4 fp32 logits + 4 their gradient + compute_bytes lm_head output)
                              C = B T, or the chunk (--ce_chunk) when the loss is computed chunk by chunk

The root group (embedding, final norm, untied lm_head) stays gathered from forward to backward (FSDP2's
default for the root), and the next block is prefetched while one runs, hence 2 x the largest block. Not
counted: one block's unsharded gradient before its reduce-scatter, the CUDA context and allocator
fragmentation; MemoryPlan.exceeds keeps a 5% margin for them. train.py prints `MemoryPlan.table()` on
rank 0 at startup and, on CUDA, refuses to start when `exceeds`, printing `advice`. `python memory.py`
prints the table of the paper's presets (`paper_table`). Parameters are counted from the config alone
(count_params, equal to model.GPT(config).num_params()). Imports torch and model.py; nothing runs at import.
"""

import math
from dataclasses import dataclass

import torch

import model

GIB = 2**30
MARGIN = 0.95  # a plan "exceeds" the device above this fraction of its memory
CE_CHUNK = 1024  # positions per cross-entropy chunk that train.py uses on CUDA for large vocabularies
PAPER_PRESETS = ("1.9bA0.3b", "3bA0.5b", "9bA1b", "45bA5.5b", "dense-0.5b", "dense-2b", "dense-3b")


# ---------------------------------------------------------------------------- parameters
def block_params(mcfg: model.GPTConfig, i: int) -> int:
    """Parameters of block i: two RMSNorm gains, q/k/v (+ bias) and o projections, and the SwiGLU MLP
    (gate, up, down) or the MoE (router, E routed experts of 3 d d_e each, one shared SwiGLU of width
    n_shared_experts * d_expert)."""
    c, d = mcfg, mcfg.d_model
    qkv_width = (c.n_head + 2 * c.kv_heads) * c.head_size
    attention = d * qkv_width + (qkv_width if c.qkv_bias else 0) + c.n_head * c.head_size * d
    if not c.is_moe_block(i):
        return 2 * d + attention + 3 * d * c.d_ff
    shared = 3 * d * c.n_shared_experts * c.d_expert
    return 2 * d + attention + d * c.n_routed_experts + 3 * c.n_routed_experts * d * c.d_expert + shared


def root_params(mcfg: model.GPTConfig) -> int:
    """The parameters outside the blocks (FSDP2's root group): embedding, final norm, lm_head unless tied."""
    return mcfg.vocab_size * mcfg.d_model * (1 if mcfg.tie_embeddings else 2) + mcfg.d_model


def count_params(mcfg: model.GPTConfig) -> int:
    """Every parameter of model.GPT(mcfg), a tied embedding once, without building the model."""
    return root_params(mcfg) + sum(block_params(mcfg, i) for i in range(mcfg.n_layer))


# ---------------------------------------------------------------------------- activations
def block_activation_bytes(mcfg: model.GPTConfig, i: int, tokens: int, compute_bytes: int) -> int:
    """Bytes block i keeps for its backward pass over `tokens` = B x T positions, in the compute dtype c.

    Counted per token, from what autograd saves in model.Block (x = x + attn(norm(x)); x = x + ffn(norm(x))):
      norms and residuals: 4 d    each RMSNorm saves its input (the block input, then the residual after
                                  attention) and its output is saved by the next matmul; plus 4-byte rstd
      attention: 3 (H + H_kv) hd  the qkv output (H + 2 H_kv) hd (v is a view of it, saved by SDPA, so the
                                  whole buffer lives), q and k after RoPE (H + H_kv) hd, the output H hd;
                                  flash/SDPA keeps only a 4-byte logsumexp per head, no T x T scores, and
                                  GQA reads the H_kv heads without expanding them
      dense SwiGLU: 4 d_ff        the gate|up output (2 d_ff), silu(gate), silu(gate) * up
      MoE: 3 K d + 4 K d_e + 4 S  each token is copied to its top_k = K experts: the dispatched input
                                  (K d), the expert outputs kept for the gate weighting (K d) and the
                                  weighted ones kept by index_add_ (K d), each expert's SwiGLU (4 d_e per
                                  copy), the shared expert (S = n_shared d_e); plus 4-byte router
                                  probabilities (E) and three int64 index vectors (K)
    so a dense block keeps tokens x [c (4 d + 3 (H + H_kv) hd + 4 d_ff) + 4 (2 + H)] bytes, and a MoE block
    c (4 d + 3 (H + H_kv) hd + 3 K d + 4 K d_e + 4 S) + 4 (2 + H + E) + 24 K. This is CUDA's count (fused
    RMSNorm, flash attention's (B, T, H, hd) output); on CPU SDPA's output is copied before the projection:
    d more per token (tests check both; fused.RMSNorm keeps its normalised input instead of the input, the
    same bytes)."""
    c, d = mcfg, mcfg.d_model
    per_token = 4 * d + 3 * (c.n_head + c.kv_heads) * c.head_size
    small = 4 * (2 + c.n_head)  # fp32 rstd of both norms, fp32 logsumexp per head
    if c.is_moe_block(i):
        K, d_e = c.top_k, c.d_expert
        per_token += 3 * K * d + 4 * K * d_e + 4 * c.n_shared_experts * d_e
        small += 4 * c.n_routed_experts + 3 * 8 * K
    else:
        per_token += 4 * c.d_ff
    return tokens * (compute_bytes * per_token + small)


def head_activation_bytes(mcfg: model.GPTConfig, tokens: int, compute_bytes: int, projector_params: int) -> int:
    """The final norm's input and output (2 d per token) and, with a SwiGLU projector of width
    projector_params / (3 d), its four hidden-width tensors plus the fp32 copies of prediction and target
    that the NITP loss compares (2 d x 4 bytes)."""
    d = mcfg.d_model
    head = 2 * d * compute_bytes
    if projector_params:
        head += 4 * (projector_params // (3 * d)) * compute_bytes + 2 * d * 4
    return tokens * head


# ---------------------------------------------------------------------------- the plan
@dataclass
class MemoryPlan:
    params: int                 # bytes per rank: fp32 master weights, 1 / world of them
    grads: int                  # fp32 gradients, sharded
    optimizer: int              # AdamW's exp_avg and exp_avg_sq, fp32, sharded
    unsharded_peak: int         # gathered compute-dtype params: root + projector + 2 x largest block
    activations: int            # what the blocks and the head keep for backward (as configured)
    logits: int                 # (B, T, V) logits around the loss
    total: int
    checkpointed_activations: int = 0  # the activations with activation checkpointing (advice's saving)
    micro_batch: int = 1        # sequences per micro-batch (activations and logits scale with it)
    logits_tokens: int = 0      # positions whose logits exist at once (the micro-batch, or one chunk)

    ROWS = (("params (fp32; FSDP2: 1 / world)", "params"), ("grads (fp32)", "grads"),
            ("AdamW states (2 x fp32)", "optimizer"), ("gathered or cast params (peak)", "unsharded_peak"),
            ("activations", "activations"), ("logits + loss", "logits"), ("total", "total"))

    def table(self, device_bytes: int | None = None) -> str:
        """One line per item in GiB (2 decimals); the device memory and the headroom left when known."""
        rows = [(label, getattr(self, key)) for label, key in self.ROWS]
        if device_bytes:
            rows += [("device memory", device_bytes), ("headroom", device_bytes - self.total)]
        return "\n".join(["memory plan per rank (GiB)"] + [f"  {label:<34}{b / GIB:>9.2f}" for label, b in rows])

    def exceeds(self, device_bytes: int | None) -> bool:
        """True when the plan is above MARGIN (95%) of the device's memory; False when that is unknown."""
        return device_bytes is not None and self.total > MARGIN * device_bytes


def plan_memory(mcfg: model.GPTConfig, world: int, micro_batch: int, seq_len: int, projector_params: int = 0,
                compute_bytes: int = 2, activation_checkpointing: bool = False, ce_chunk: int = 0,
                aux_logit_heads: int = 0) -> MemoryPlan:
    """The per-rank memory of FSDP2 training of mcfg (+ a projector of projector_params parameters) on
    `world` ranks, micro_batch x seq_len tokens per micro-step, parameters gathered in compute_bytes (2: bf16
    on CUDA, 4: fp32). With activation checkpointing each block keeps only its input (B x T x d) and one
    block's full activations exist at a time, during its recompute. ce_chunk > 0: the cross-entropy is computed
    over chunks of that many positions (model.cross_entropy_sum), so only one chunk's logits exist at a time.
    aux_logit_heads: how many more logits-sized tensors (with their gradient) the aux term holds (peers.logit_heads:
    MTP one per depth, NextLat one); a peer head's activations are estimated like a projector's."""
    if min(world, micro_batch, seq_len) < 1 or projector_params < 0 or compute_bytes not in (2, 4):
        raise ValueError(f"plan_memory needs world, micro_batch, seq_len >= 1, projector_params >= 0 and "
                         f"compute_bytes 2 or 4; got {world}, {micro_batch}, {seq_len}, {projector_params}, "
                         f"{compute_bytes}")
    n = count_params(mcfg) + projector_params
    tokens = micro_batch * seq_len
    blocks = [block_activation_bytes(mcfg, i, tokens, compute_bytes) for i in range(mcfg.n_layer)]
    head = head_activation_bytes(mcfg, tokens, compute_bytes, projector_params)
    full = sum(blocks) + head
    checkpointed = mcfg.n_layer * tokens * mcfg.d_model * compute_bytes + max(blocks) + head
    largest = max(block_params(mcfg, i) for i in range(mcfg.n_layer))
    parts = dict(params=4 * n // world, grads=4 * n // world, optimizer=8 * n // world,
                 unsharded_peak=compute_bytes * (root_params(mcfg) + projector_params + 2 * largest),
                 activations=checkpointed if activation_checkpointing else full,
                 logits=(1 + aux_logit_heads) * min(tokens, ce_chunk or tokens) * mcfg.vocab_size * (8 + compute_bytes))
    return MemoryPlan(**parts, total=sum(parts.values()), checkpointed_activations=checkpointed,
                      micro_batch=micro_batch, logits_tokens=min(tokens, ce_chunk or tokens))


# ---------------------------------------------------------------------------- the device and what to change
def device_memory(device) -> int | None:
    """Total memory of a CUDA device in bytes; None elsewhere (CPU memory is not planned)."""
    device = torch.device(device)
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def _more_gpus(plan: MemoryPlan, budget: float, world: int, activation_checkpointing: bool) -> str:
    """The world size whose shards of params, grads and AdamW fit beside what does not shard; with activation
    checkpointing added when more GPUs alone cannot do it."""
    sharded = (plan.params + plan.grads + plan.optimizer) * world
    unsharded = plan.total - sharded / world
    extra = ""
    if unsharded >= budget and not activation_checkpointing:
        unsharded += plan.checkpointed_activations - plan.activations
        extra = " with --activation_checkpointing=true"
    if unsharded >= budget:
        return f"more GPUs alone cannot fit: what does not shard needs {unsharded / GIB:.2f} GiB{extra}"
    need = math.ceil(sharded / (budget - unsharded))
    if need <= world:
        return f"more GPUs do not help: params + grads + AdamW are only {sharded / world / GIB:.2f} GiB per rank"
    return f"more GPUs: a world size >= {need} fits the sharded states{extra} (now {world})"


def advice(plan: MemoryPlan, device_bytes: int | None, world: int, activation_checkpointing: bool) -> str:
    """One line: whether the plan fits the device and, when it does not, what to change (more GPUs, activation
    checkpointing, a smaller --batch_size), each with the figure that makes it fit."""
    if device_bytes is None:
        return f"memory plan {plan.total / GIB:.2f} GiB per rank; device memory unknown, not checked"
    budget = MARGIN * device_bytes
    if not plan.exceeds(device_bytes):
        return f"memory plan {plan.total / GIB:.2f} GiB per rank fits {budget / GIB:.2f} GiB (95% of the device)"
    tips = [_more_gpus(plan, budget, world, activation_checkpointing)]
    saving = plan.activations - plan.checkpointed_activations
    if not activation_checkpointing and saving > 0:
        tips.append(f"--activation_checkpointing=true saves {saving / GIB:.2f} GiB (one extra forward per block)")
    if plan.logits_tokens > CE_CHUNK:
        saving = plan.logits * (1 - CE_CHUNK / plan.logits_tokens)
        tips.append(f"--ce_chunk={CE_CHUNK} saves {saving / GIB:.2f} GiB of logits (the head's forward is recomputed)")
    per_sequence = (plan.activations + plan.logits) / plan.micro_batch
    fixed = plan.total - per_sequence * plan.micro_batch
    smaller = [b for b in range(plan.micro_batch - 1, 0, -1) if plan.micro_batch % b == 0]
    fitting = [b for b in smaller if fixed + b * per_sequence <= budget]
    if fitting:
        tips.append(f"--batch_size={fitting[0]} (gradient accumulation keeps --global_batch_tokens)")
    elif smaller:
        tips.append("a smaller --batch_size alone is not enough")
    else:
        tips.append("already --batch_size=1: a shorter --seq_len lowers activations and logits")
    return (f"memory plan {plan.total / GIB:.2f} GiB per rank exceeds {budget / GIB:.2f} GiB (95% of the device); "
            + "; ".join(tips))


# ---------------------------------------------------------------------------- the paper's presets
def paper_table(world: int = 8, device_gib: float = 80) -> str:
    """Markdown: per-rank GiB of each paper preset with its NITP projector (12 d^2 parameters) on `world`
    GPUs of device_gib GiB, bf16 compute, micro-batch 1 x 8192 tokens: plain, with activation checkpointing
    (AC) and with AC and the chunked cross-entropy (CE_CHUNK positions at a time)."""
    device_bytes = int(device_gib * GIB)
    head = ["preset", "params (B)", "params+grads+AdamW", "gathered params", "activations", "activations AC",
            "logits", "logits chunked", "total", "total AC", "total AC + chunked", f"fits {device_gib:g} GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in PAPER_PRESETS:
        mcfg = model.PRESETS[name]
        projector = 12 * mcfg.d_model**2
        plain, ac, chunked = (plan_memory(mcfg, world, 1, 8192, projector, 2, checkpointing, chunk)
                              for checkpointing, chunk in ((False, 0), (True, 0), (True, CE_CHUNK)))
        fits = ("yes" if not plain.exceeds(device_bytes) else "with AC" if not ac.exceeds(device_bytes)
                else "with AC + chunked" if not chunked.exceeds(device_bytes) else "no")
        cells = [name, f"{(count_params(mcfg) + projector) / 1e9:.2f}"]
        cells += [f"{b / GIB:.2f}" for b in (plain.params + plain.grads + plain.optimizer, plain.unsharded_peak,
                                              plain.activations, ac.activations, plain.logits, chunked.logits,
                                              plain.total, ac.total, chunked.total)]
        lines.append("| " + " | ".join(cells + [fits]) + " |")
    caption = (f"Per-rank memory (GiB) of FSDP2 training on {world} GPUs: bf16 compute, AdamW, micro-batch 1 x 8192 "
               f"tokens, NITP projector included; AC = activation checkpointing; chunked = the cross-entropy over "
               f"{CE_CHUNK} positions at a time; fits = total within 95% of {device_gib:g} GiB.")
    return "\n".join([caption, ""] + lines)


def main() -> None:
    print(paper_table())


if __name__ == "__main__":
    main()
