"""model.py: every architecture the NITP paper trains, in one file (docs/method.md, "The paper's numbers").

A pre-norm decoder-only Transformer:

    idx -> embed -> n_layer x Block -> final RMSNorm -> lm_head -> logits
    Block: x = x + attn(norm(x));  x = x + ffn(norm(x))

* attention: grouped-query causal attention (n_kv_head key/value heads shared by n_head query heads,
  head_dim independent of d_model), rotary position embedding, optional qkv bias (Qwen2), computed by
  F.scaled_dot_product_attention.
* ffn: a SwiGLU MLP (dense blocks) or a DeepSeek-V2 mixture of experts (MoE blocks): the first
  n_dense_layers blocks are dense, the rest have n_shared_experts always-on experts plus n_routed_experts
  fine-grained experts of which each token picks top_k (token choice, dropless).

What NITP and its peers need comes out of the same forward pass: `model(idx, layers=(k, ...))` returns the
residual stream after block k (k = 0 is the embedding output, k = i the output of block i; NITP's implicit-token
target is a shallow one, the preset's target layer) and the final hidden state after the final norm. Also here:
the presets (PRESETS), parameter counts (GPT.num_params) and the init (init_weights, peers.py's too); what a
token costs to train is support/flops.py's.

Speed switches. Each replaces a plain formula here by a faster form of the same function only while it is on;
the plain formula stays beside it, and it is what the tests compare the fast form against:
* fused CPU kernels (support/fused.py): RoPE, RMSNorm and SwiGLU as autograd Functions, in eager float32 only.
  On by default, where it pays (docs/performance.md, "Against nanoGPT", has what each buys); off with
  `train.py --fused_kernels=false` or `with fused.disabled():`.
* grouped GEMM (run_experts_grouped): the MoE experts in one torch._grouped_mm per projection, automatic on CUDA
  in bf16; `MoE.use_grouped_mm = False` forces the reference loop (run_experts_loop).
Imports torch and support/fused.py. Nothing runs at import.
"""

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from support import fused


# ---------------------------------------------------------------------------- config
@dataclass
class GPTConfig:
    """Every architectural knob. The defaults are the gpt2-124m preset; a preset is a GPTConfig value.

    balance_coef: DeepSeek-V2's expert-level balance factor alpha_1 = 0.003. The paper does not give its
    value; DeepSeek-V2 chose it small enough not to compete with the LM loss (the unscaled loss is 1.0 at
    perfect balance, so it adds ~0.003) while still keeping routing from collapsing onto a few experts.
    """
    vocab_size: int = 50304  # GPT-2's 50,257 padded to a multiple of 64 (nanoGPT: ~25% faster)
    block_size: int = 1024  # longest sequence the model accepts
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    n_kv_head: int | None = None  # None -> n_head (plain multi-head attention)
    head_dim: int | None = None  # None -> d_model // n_head
    d_ff: int = 2048  # hidden width of the dense SwiGLU MLP
    n_dense_layers: int = 1  # MoE models: the first blocks are dense (DeepSeek-V2)
    n_routed_experts: int = 0  # 0 = dense model (the MoE fields below are then unused)
    n_shared_experts: int = 1
    top_k: int = 2
    d_expert: int = 256  # hidden width of each (routed or shared) expert
    balance_coef: float = 0.003  # weight of the balance loss in train.py (see the docstring)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_embeddings: bool = True
    init_std: float = 0.02
    nitp_target_layer: int | None = None  # the paper's target block k for this model, if it has one
    nitp_weight: float | None = None  # the paper's lambda for this model, if it has one

    def __post_init__(self):
        def require(ok, message):  # checked in order, so later checks may rely on earlier ones
            if not ok:
                raise ValueError(f"GPTConfig: {message}")
        require(min(self.vocab_size, self.block_size, self.n_layer, self.d_model, self.n_head, self.d_ff) > 0,
                "vocab_size, block_size, n_layer, d_model, n_head and d_ff must be positive")
        require(self.kv_heads > 0 and self.n_head % self.kv_heads == 0,
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}: each key/value head serves "
                "n_head / n_kv_head query heads; pick n_kv_head among the divisors of n_head")
        require(self.head_dim is not None or self.d_model % self.n_head == 0,
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; set head_dim explicitly")
        require(self.head_size > 0 and self.head_size % 2 == 0,
                f"head_dim={self.head_size} must be positive and even (RoPE rotates pairs of features)")
        require(self.nitp_target_layer is None or 0 <= self.nitp_target_layer <= self.n_layer,
                f"nitp_target_layer={self.nitp_target_layer} is outside [0, n_layer={self.n_layer}]; "
                "set it in that range or to None")
        require(self.balance_coef >= 0 and self.init_std > 0 and self.norm_eps > 0 and self.rope_theta > 0,
                "balance_coef must be >= 0 and init_std, norm_eps, rope_theta > 0")
        require(self.n_routed_experts >= 0, f"n_routed_experts={self.n_routed_experts} must be >= 0 (0 = dense)")
        if self.n_routed_experts:
            require(1 <= self.top_k <= self.n_routed_experts,
                    f"top_k={self.top_k} must be in [1, n_routed_experts={self.n_routed_experts}]: a token cannot "
                    "pick more experts than exist; lower top_k or add experts")
            require(self.d_expert > 0 and self.n_shared_experts >= 0, "d_expert must be > 0, n_shared_experts >= 0")
            require(0 <= self.n_dense_layers <= self.n_layer,
                    f"n_dense_layers={self.n_dense_layers} must be in [0, n_layer={self.n_layer}]")

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_head if self.head_dim is None else self.head_dim

    def nitp_defaults(self, target_layer: int | None = None, weight: float | None = None) -> tuple[int, float]:
        """(target layer, lambda) of NITP on this model, the one place they are resolved: the values given, else
        the paper's for this preset (nitp_target_layer, nitp_weight), else the rule of thumb: target
        round(0.2 * n_layer), lambda 1.0. A negative target counts from the top like a Python index over the
        n_layer + 1 taps (0 = embedding, k = after block k): -1 = after the last block, -2 = n_layer - 1."""
        if target_layer is None:
            target_layer = round(0.2 * self.n_layer) if self.nitp_target_layer is None else self.nitp_target_layer
        if target_layer < 0:
            target_layer += self.n_layer + 1
        weight = next(w for w in (weight, self.nitp_weight, 1.0) if w is not None)
        return target_layer, float(weight)

    def is_moe_block(self, i: int) -> bool:
        return self.n_routed_experts > 0 and i >= self.n_dense_layers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**d)


@dataclass
class GPTOutput:
    logits: torch.Tensor | None  # (B, T, V), None when compute_logits=False
    final_hidden: torch.Tensor  # (B, T, d) after the final norm: the unembedding's input
    layers: dict = field(default_factory=dict)  # {k: (B, T, d)} residual stream after block k (0 = embedding)
    balance_loss: torch.Tensor | None = None  # 0-dim, unscaled, mean over MoE layers (0.0 for dense)
    ce_sum: torch.Tensor | None = None  # 0-dim: summed next-token cross-entropy, when targets were given


# ---------------------------------------------------------------------------- building blocks
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if fused.enabled(x) and self.weight.dtype == x.dtype:  # speed switch: the fused kernel, same function
            return fused.RMSNorm.apply(x, self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device=None, dtype=torch.float32):
    """cos, sin of the rotary angles, each (T, head_dim / 2), computed from positions on every call: no
    cache to build (the model constructs on the meta device) and none to outgrow. float32 unless the model
    runs in float64 (bf16 angles would be off by whole radians at position 8192)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=dtype), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate feature pairs (i, i + hd/2) of x (B, H, T, hd) by position-dependent angles (GPT-NeoX /
    Llama half-split layout), in at least float32, so that q.k depends only on relative position."""
    if fused.enabled(x) and cos.dtype == x.dtype:  # speed switch: the fused kernel, same bits
        return fused.RoPE.apply(x, cos, sin)
    x1, x2 = x.to(torch.promote_types(x.dtype, cos.dtype)).chunk(2, dim=-1)  # (B, H, T, hd/2) each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Grouped-query attention: query head h reads key/value head h // (n_head / n_kv_head)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_size
        # q, k and v in one matmul: rows [q heads | k heads | v heads]
        self.qkv = nn.Linear(config.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=False)

    def forward(self, x, cos, sin):  # x (B, T, d)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, self.n_kv_head * self.head_dim,
                                     self.n_kv_head * self.head_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_head != self.n_head)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))  # (B, T, d)


def silu_gate(gate_up):
    """silu(gate) * up for gate_up = [gate | up] (..., 2 hidden) -> (..., hidden)."""
    if fused.enabled(gate_up):  # speed switch: the fused kernel, same bits
        return fused.SwiGLU.apply(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)  # (..., hidden) each
    return F.silu(gate) * up


class SwiGLU(nn.Module):
    """down(silu(gate x) * up x), no biases; gate and up share one matmul."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(silu_gate(self.gate_up(x)))


def run_experts_loop(x, counts, w_gate, w_up, w_down):
    """Reference expert computation: rows of x are grouped by expert (counts[e] rows for expert e, in
    order); one SwiGLU per expert on its contiguous slice. Any device and dtype. x (N, d) -> (N, d)."""
    chunks = x.split(counts.tolist())  # host sync: fine on CPU, the reason CUDA takes the grouped path
    # unbind (not w[e]) so the backward stacks the per-expert grads once instead of summing E full-size ones
    outs = [(F.silu(xe @ wg) * (xe @ wu)) @ wd
            for xe, wg, wu, wd in zip(chunks, w_gate.unbind(0), w_up.unbind(0), w_down.unbind(0))]
    return torch.cat(outs)


def run_experts_grouped(x, counts, w_gate, w_up, w_down):
    """Same as run_experts_loop with torch._grouped_mm: one kernel per projection for all experts, no host
    sync, static shapes (torch.compile friendly). Expert e owns rows offsets[e-1]:offsets[e]. The CUDA
    kernel wants bf16 (the autocast dtype is used when autocast is on); the CPU kernel takes fp32/bf16,
    but torch.compile traces it in bf16 only. Every feature size must be a multiple of 16 bytes."""
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)  # (E,) end of each expert's rows
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    x, w_gate, w_up, w_down = (t.to(dtype) for t in (x, w_gate, w_up, w_down))
    h = F.silu(torch._grouped_mm(x, w_gate, offs=offsets)) * torch._grouped_mm(x, w_up, offs=offsets)  # (N, d_e)
    return torch._grouped_mm(h, w_down, offs=offsets)  # (N, d)


class MoE(nn.Module):
    """DeepSeek-V2 mixture of experts: shared experts (one SwiGLU of width n_shared * d_expert) plus
    n_routed_experts SwiGLU experts; each token picks its top_k experts by softmax score over all experts
    and weighs their outputs by those scores (no renormalisation). Dropless: every assignment is computed.

    Dispatch: stable argsort of the (N * top_k) assignments by expert id -> per-expert counts -> each
    expert runs on its contiguous slice (grouped matmul or loop) -> weighted index_add_ back to tokens.
    Also returns the expert-level balance loss sum_i f_i P_i, f_i = E / (top_k N) * count_i (the fraction
    of assignments to expert i times E; 1 everywhere at perfect balance), P_i = mean_t s_{i,t}: it is 1.0
    at perfect balance and grows to E when all tokens pick the same experts.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        d, E, d_e = config.d_model, config.n_routed_experts, config.d_expert
        self.n_experts, self.top_k = E, config.top_k
        self.router = nn.Linear(d, E, bias=False)
        self.w_gate = nn.Parameter(torch.empty(E, d, d_e))  # (E, d, d_e), each expert computes x @ w
        self.w_up = nn.Parameter(torch.empty(E, d, d_e))  # (E, d, d_e)
        self.w_down = nn.Parameter(torch.empty(E, d_e, d))  # (E, d_e, d)
        self.shared = SwiGLU(d, config.n_shared_experts * d_e) if config.n_shared_experts else None
        self.use_grouped_mm = None  # None: auto (CUDA + bf16); True/False forces a path (tests, benchmarks)

    def grouped_mm_ok(self, x) -> bool:
        if self.use_grouped_mm is not None:
            return self.use_grouped_mm
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        aligned = x.shape[-1] % 8 == 0 and self.w_gate.shape[-1] % 8 == 0  # 16-byte rows in bf16
        return x.is_cuda and dtype == torch.bfloat16 and aligned and hasattr(torch, "_grouped_mm")

    def forward(self, x):  # x (B, T, d) -> (out (B, T, d), balance_loss (), expert_load (E,))
        x_flat = x.reshape(-1, x.shape[-1])  # (N, d)
        N, E, K = x_flat.shape[0], self.n_experts, self.top_k
        score_dtype = torch.promote_types(x.dtype, torch.float32)  # softmax and gates in >= float32
        scores = F.softmax(self.router(x_flat), dim=-1, dtype=score_dtype)  # (N, E)
        gate, expert = scores.topk(K, dim=-1)  # (N, K) each; assignment a = (token a // K, expert[a])
        expert = expert.flatten()  # (N*K,)
        order = torch.argsort(expert, stable=True)  # assignments grouped by expert, token order kept
        token = order // K  # (N*K,) the token of each sorted assignment
        # bincount(expert, minlength=E) with a static output size (no data-dependent shape for compile)
        counts = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(0, expert, torch.ones_like(expert))
        run_experts = run_experts_grouped if self.grouped_mm_ok(x) else run_experts_loop  # speed switch: grouped GEMM
        y = run_experts(x_flat[token], counts, self.w_gate, self.w_up, self.w_down)  # (N*K, d)
        y = (y * gate.flatten()[order].unsqueeze(-1)).to(x.dtype)  # weight each assignment by its score
        out = torch.zeros_like(x_flat).index_add_(0, token, y)  # (N, d) sum over each token's K experts
        if self.shared is not None:
            out = out + self.shared(x_flat)
        load = counts.to(scores.dtype) / (N * K)  # (E,) fraction of assignments per expert
        balance_loss = (E * load * scores.mean(dim=0)).sum()  # sum_i f_i P_i
        return out.view(x.shape), balance_loss, load.detach()


class Block(nn.Module):
    def __init__(self, config: GPTConfig, moe: bool):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.is_moe = moe
        self.mlp = MoE(config) if moe else SwiGLU(config.d_model, config.d_ff)
        self.activation_checkpointing = False  # a training choice (train.py sets it), not part of the architecture

    def forward(self, x, cos, sin):  # x (B, T, d) -> (x, balance_loss or None)
        if self.activation_checkpointing and torch.is_grad_enabled():
            # keep only the block's input; its activations are recomputed in the backward pass
            return torch.utils.checkpoint.checkpoint(self.compute, x, cos, sin, use_reentrant=False)
        return self.compute(x, cos, sin)

    def compute(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        if not self.is_moe:
            return x + self.mlp(self.mlp_norm(x)), None
        y, balance_loss, _ = self.mlp(self.mlp_norm(x))
        return x + y, balance_loss


# ---------------------------------------------------------------------------- the model
@torch.no_grad()
def init_weights(root: nn.Module, config: GPTConfig, blocks) -> None:
    """N(0, init_std^2) for every matrix of `root`, zero biases, unit norm gains; the matrices of `blocks` that
    write into the residual stream get init_std / sqrt(2 n_layer) (GPT-2), so its variance stays O(1) with depth
    (peers.py's MTP blocks too). A small init keeps CPU training clear of denormals (docs/method.md)."""
    std = config.init_std
    residual_std = std / math.sqrt(2 * config.n_layer)
    for module in root.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, MoE):
            for w in (module.w_gate, module.w_up, module.w_down):
                nn.init.normal_(w, std=std)
    for block in blocks:
        mlp = block.mlp
        outs = [block.attn.proj.weight] + ([mlp.w_down] if block.is_moe else [mlp.down.weight])
        outs += [mlp.shared.down.weight] if block.is_moe and mlp.shared is not None else []
        for w in outs:
            nn.init.normal_(w, std=residual_std)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, config.is_moe_block(i)) for i in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        init_weights(self, config, self.blocks)

    def num_params(self, active: bool = False) -> int:
        """All parameters (a tied embedding counted once) or, with active=True, those one token touches:
        everything except the routed experts it did not pick (E - top_k per MoE layer)."""
        total = sum(p.numel() for p in self.parameters())
        if not active:
            return total
        c = self.config
        n_moe = sum(block.is_moe for block in self.blocks)
        return total - n_moe * (c.n_routed_experts - c.top_k) * 3 * c.d_model * c.d_expert

    def check_input(self, idx, layers):
        c = self.config
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}; add a batch dim")
        if idx.shape[1] > c.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size={c.block_size}; "
                             "feed shorter windows or build the model with a larger block_size")
        bad = [k for k in layers if not (isinstance(k, int) and 0 <= k <= c.n_layer)]
        if bad:
            raise ValueError(f"layers {bad} outside [0, n_layer={c.n_layer}] (0 = embedding output, "
                             f"k = residual stream after block k); ask for indices in that range")
        if torch.compiler.is_compiling():
            return  # token ids were checked in eager; a data-dependent branch would break the graph
        message = f"token ids must be in [0, vocab_size={c.vocab_size}); check the tokenizer or raise vocab_size"
        if idx.device.type == "cpu":
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= c.vocab_size):
                raise ValueError(f"{message} (got ids in [{int(idx.min())}, {int(idx.max())}])")
        else:  # no host sync on accelerators: the check fails asynchronously with the same message
            torch._assert_async(((idx >= 0) & (idx < c.vocab_size)).all(), message)

    def forward(self, idx, layers=(), compute_logits=True, targets=None, ce_chunk: int = 0) -> GPTOutput:
        """idx (B, T) int64 -> GPTOutput. `layers`: block indices k in [0, n_layer] whose residual stream
        to return (not detached: the caller decides about gradients). With targets (B, T): the summed
        cross-entropy, computed over chunks of ce_chunk positions when ce_chunk > 0 (no full logits)."""
        layers = tuple(layers)
        self.check_input(idx, layers)
        c = self.config
        rope_dtype = torch.promote_types(self.embed.weight.dtype, torch.float32)
        cos, sin = rope_cos_sin(idx.shape[1], c.head_size, c.rope_theta, idx.device, rope_dtype)  # (T, hd/2)
        x = self.embed(idx)  # (B, T, d)
        hidden = {0: x} if 0 in layers else {}
        balance_losses = []
        for i, block in enumerate(self.blocks):
            x, balance_loss = block(x, cos, sin)
            if balance_loss is not None:
                balance_losses.append(balance_loss)
            if i + 1 in layers:
                hidden[i + 1] = x
        final_hidden = self.norm(x)  # (B, T, d)
        logits = self.lm_head(final_hidden) if compute_logits else None  # (B, T, V)
        balance = torch.stack(balance_losses).mean() if balance_losses else torch.zeros((), device=idx.device)
        ce_sum = None
        if targets is not None:
            ce_sum = (cross_entropy_sum(final_hidden, self.lm_head.weight, targets, ce_chunk) if logits is None
                      else F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum"))
        return GPTOutput(logits, final_hidden, hidden, balance, ce_sum)


def _head_cross_entropy_sum(hidden, weight, targets):  # (N, d), (V, d), (N,) -> summed CE, logits in float32
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def cross_entropy_sum(hidden, weight, targets, chunk: int = 0):
    """sum_t CE(hidden_t @ weight^T, targets_t) for hidden (B, T, d), targets (B, T). chunk > 0: chunk positions
    at a time, each chunk's logits recomputed in the backward pass (torch.utils.checkpoint), so at most
    chunk x V logits exist at once instead of B x T x V in float32 plus their gradient; the same values up to
    float32 summation order. chunk = 0: the plain head."""
    hidden, targets = hidden.flatten(0, 1), targets.flatten()  # (N, d), (N,)
    if chunk <= 0 or chunk >= len(targets):
        return _head_cross_entropy_sum(hidden, weight, targets)
    return sum(torch.utils.checkpoint.checkpoint(_head_cross_entropy_sum, h, weight, t, use_reentrant=False)
               for h, t in zip(hidden.split(chunk), targets.split(chunk)))


# ---------------------------------------------------------------------------- presets
def _moe_preset(n_layer, d_model, head_dim, n_head, n_kv_head, d_ff, d_expert, top_k, target, weight):
    """The paper's MoE models (DeepSeek-V2 style): 1 dense block, 144 routed + 1 shared experts, untied."""
    return GPTConfig(vocab_size=152064, block_size=8192, n_layer=n_layer, d_model=d_model, n_head=n_head,
                     n_kv_head=n_kv_head, head_dim=head_dim, d_ff=d_ff, n_dense_layers=1, n_routed_experts=144,
                     n_shared_experts=1, top_k=top_k, d_expert=d_expert, rope_theta=10000.0,
                     tie_embeddings=False, nitp_target_layer=target, nitp_weight=weight)


def _dense_preset(n_layer, d_model, head_dim, n_head, n_kv_head, d_ff, target, weight):
    """The paper's dense models, built Qwen2-style: qkv bias, rope_theta 1e6, tied embeddings."""
    return GPTConfig(vocab_size=152064, block_size=8192, n_layer=n_layer, d_model=d_model, n_head=n_head,
                     n_kv_head=n_kv_head, head_dim=head_dim, d_ff=d_ff, qkv_bias=True, rope_theta=1e6,
                     tie_embeddings=True, nitp_target_layer=target, nitp_weight=weight)


_SMALL_ATTENTION = dict(vocab_size=50304, block_size=256, n_layer=6, d_model=256, n_head=8, n_kv_head=4,
                        head_dim=32, d_ff=768, nitp_target_layer=1, nitp_weight=1.0)  # target ~20% depth
_TINY = dict(block_size=64, d_model=32, n_head=4, n_kv_head=2, head_dim=8, d_ff=64, nitp_target_layer=1,
             nitp_weight=1.0)
PRESETS: dict[str, GPTConfig] = {
    # MoE (shapes: docs/method.md, "The paper's numbers"; target layer and lambda: "Defaults per model")
    "1.9bA0.3b": _moe_preset(16, 512, 64, 8, 4, 10944, 496, top_k=8, target=3, weight=1.0),
    "3bA0.5b": _moe_preset(17, 768, 96, 8, 4, 10944, 544, top_k=8, target=4, weight=1.0),
    "9bA1b": _moe_preset(24, 1280, 160, 8, 4, 10944, 640, top_k=8, target=5, weight=0.8),
    "45bA5.5b": _moe_preset(24, 3072, 128, 24, 8, 12288, 1408, top_k=12, target=5, weight=0.6),
    # dense
    "dense-0.5b": _dense_preset(24, 896, 64, 14, 2, 4864, target=5, weight=1.0),
    "dense-2b": _dense_preset(28, 1792, 128, 14, 2, 10752, target=6, weight=1.0),
    "dense-3b": _dense_preset(28, 2560, 128, 20, 4, 10240, target=6, weight=0.8),
    # GPT-2 small shape with SwiGLU (d_ff 2048 keeps ~124M) and RoPE; target round(0.2 * 12) = 2
    "gpt2-124m": GPTConfig(nitp_target_layer=2, nitp_weight=1.0),
    # CPU-sized
    "tiny-dense": GPTConfig(vocab_size=50304, n_layer=2, **_TINY),
    "tiny-moe": GPTConfig(vocab_size=50304, n_layer=3, n_dense_layers=1, n_routed_experts=8, n_shared_experts=1,
                          top_k=2, d_expert=16, **_TINY),
    "small": GPTConfig(**_SMALL_ATTENTION),
    "small-moe": GPTConfig(**_SMALL_ATTENTION, n_dense_layers=1, n_routed_experts=16, n_shared_experts=1,
                           top_k=2, d_expert=128),
    # for long CPU runs on a compacted vocabulary (data.py --compact_vocab=true: Shakespeare keeps 18,817 ids,
    # rounded up to a multiple of 64); target round(0.2 * 4) = 1
    "mini-compact": GPTConfig(vocab_size=18880, block_size=256, n_layer=4, d_model=128, n_head=4, n_kv_head=2,
                              head_dim=32, d_ff=384, nitp_target_layer=1, nitp_weight=1.0),
}


def get_preset(name: str) -> GPTConfig:
    """A copy of PRESETS[name] (safe to modify)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
