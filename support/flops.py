"""flops.py: what one token costs to train, and what a GPU can do at most: the two halves of MFU.

flops_per_token counts a model's training FLOPs per token from its config (model.GPTConfig) alone, with the
auxiliary objective's extra (NITP's projector, from its parameter count, and the cosine; MTP's modules, NextLat's
dynamics model: peers.flops_kwargs); peak_bf16_flops looks up a GPU's dense bf16 peak. train.py logs
MFU from them, bench.py prints the FLOPs floor of each objective beside its measured step time, compare.py the
same from the runs' logs, and the docs' cost tables come from here. Imports torch, nitp_loss.py (the projector
itself) and peers.py (their arguments). Nothing runs at import.
"""

import torch

from nitp_loss import NITPHead
from support import peers


def flops_per_token(config, seq_len: int, projector_params: int | None = None, paper_mode: bool = False,
                    mtp_depth: int = 0, nextlat: bool = False) -> dict:
    """Training FLOPs per token (forward + backward = 6 x multiply-adds' parameters touched).

    Full count (paper_mode=False): 6 x every matmul parameter a token touches (q, k, v with GQA, o;
    dense FFNs; shared + top_k routed experts and the router in MoE blocks; the unembedding; the
    embedding lookup is free; norms, biases and elementwise ops are ignored), plus attention scores:
    QK^T and AV cost 4 * n_head * head_dim * ctx forward per layer, x3 for training; nanoGPT counts
    12 * L * n_head * head_dim * T with ctx = T, but under a causal mask a token sees (T + 1) / 2 ~ T / 2
    keys on average (and flash attention skips the masked half), so we count 6 * L * n_head * head_dim * T.
    paper_mode=True: the paper's approximation (docs/method.md, "FLOPs accounting"), L (18 d^2 + 18 k d d_e)
    + 6 V d with every layer MoE (k = top_k + shared; a dense model uses 18 d d_ff instead), no attention scores.
    The aux term's extra (docs/method.md, "FLOPs accounting", "Peers: MTP and NextLat"): NITP's projector 6 per
    weight (projector_params: every NITPHead kind is matrices only, so any kind is counted from its parameters; the
    paper's SwiGLU of width h has 3 d h, 18 d h FLOPs) + the loss ~18 d; MTP, per depth, the 2d -> d projection 12
    d^2 + one block of the model's kind + the shared unembedding 6 V d; NextLat its dynamics MLP 24 d^2 + the frozen
    head 4 V d.
    Returns {"ntp", "aux_extra", "aux_ratio", "breakdown": {...}}.
    """
    c, d, L, V = config, config.d_model, config.n_layer, config.vocab_size
    k_active = c.top_k + c.n_shared_experts
    if paper_mode:
        ffn = 18 * k_active * d * c.d_expert if c.n_routed_experts else 18 * d * c.d_ff
        breakdown = {"attention": L * 18 * d * d, "ffn": L * ffn, "unembedding": 6 * V * d}
        block = 18 * d * d + ffn
    else:
        n_moe = sum(c.is_moe_block(i) for i in range(L))
        q_width, kv_width = c.n_head * c.head_size, c.kv_heads * c.head_size
        attention = 6 * (2 * d * q_width + 2 * d * kv_width), 6 * q_width * seq_len  # one layer: projections, scores
        dense, moe, router = 6 * 3 * d * c.d_ff, 6 * 3 * d * c.d_expert * k_active, 6 * d * c.n_routed_experts
        breakdown = {"attention_proj": L * attention[0], "attention_scores": L * attention[1],
                     "ffn_dense": (L - n_moe) * dense, "ffn_moe": n_moe * moe, "router": n_moe * router,
                     "unembedding": 6 * d * V}
        block = sum(attention) + (moe + router if c.n_routed_experts else dense)
    aux = dict(projector=6 * projector_params, cosine=18 * d) if projector_params is not None else {}
    aux.update({"mtp": mtp_depth * (12 * d * d + block + 6 * V * d)} if mtp_depth else {})
    aux.update({"nextlat": 24 * d * d + 4 * V * d} if nextlat else {})
    ntp, extra = float(sum(breakdown.values())), float(sum(aux.values()))
    return {"ntp": ntp, "aux_extra": extra, "aux_ratio": extra / ntp, "breakdown": {**breakdown, **aux}}


def aux_flops_kwargs(cfg, mcfg) -> dict:
    """The aux term's arguments to flops_per_token for a run's config: NITP's projector counted from the head
    itself (its parameters, built on the meta device), so every projector kind is counted; the peers' from
    peers.flops_kwargs; nothing for ntp."""
    if cfg.objective == "nitp":
        with torch.device("meta"):
            head = NITPHead(mcfg.d_model, cfg.projector_hidden, cfg.projector)
        return {"projector_params": sum(p.numel() for p in head.parameters())}
    return peers.flops_kwargs(cfg) if cfg.objective in peers.PEERS else {}


# bf16 dense tensor-core peaks (no sparsity), FLOP/s, keyed by a substring of torch.cuda.get_device_name()
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
                   "L40S": 362e12, "4090": 165e12}


def peak_bf16_flops(device) -> float | None:
    """The dense bf16 peak of a CUDA device, for MFU (nanoGPT's estimate_mfu hard-wires the A100's); the longest
    matching name wins ("H100 PCIe" over "H100"). None off CUDA or for a GPU not in PEAK_BF16_FLOPS: then pass
    the figure yourself (--peak_flops in train.py and bench.py)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    matches = [key for key in PEAK_BF16_FLOPS if key in name]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None
