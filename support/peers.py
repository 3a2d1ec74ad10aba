"""peers.py: the other auxiliary objectives NITP is compared with: MTP, NextLat and the generic regulariser.

Like NITP, each adds a term to next-token prediction in the same forward pass, through a head that is trained
with the model and dropped afterwards (docs/method.md, "Peers: MTP and NextLat", has the exact forms, the
sources and every choice):

    mtp      DeepSeek-V3's sequential multi-token prediction, depth D. Module k (1..D) combines the RMS-normed
             state of depth k-1 at position t (depth 0: the residual after the model's last block) with the
             RMS-normed embedding of token t+k: h' = W_k [norm(h^{k-1}_t); norm(emb(x_{t+k}))] (2d -> d), runs
             one Transformer block of the model's kind over the sequence, and predicts token t+k+1 through its
             own final RMSNorm and the model's shared unembedding. Loss: the cross-entropy summed over depths
             and positions; only the T-k positions whose target exists count at depth k.
    nextlat  next-latent prediction (Teoh et al. 2025): a latent dynamics MLP predicts the next final hidden
             state, h^_{t+1} = h_t + f([h_t; sg(emb(x_{t+1}))]); per position t < T-1, with h_{t+1} detached,
             nextlat_weight * smooth_l1(h^_{t+1}, h_{t+1}) + nextlat_kl_weight * KL(p(h_{t+1}) || p(h^_{t+1})),
             p(h) = softmax(h W^T) through the model's unembedding, frozen (detached) on both sides.

    cosreg   the paper's "generic regulariser" ablation: the mean pairwise cosine of h within each sequence
             (nitp_loss.pairwise_cosine_penalty), in NITP's place and with its weight.

How it fits: train.py spells out NTP and NITP and reaches these through one marked branch, the plug at the end
of this file: `build_head` puts MTPHead or LatentDynamics in train.py's one `projector` slot (its own FSDP2 unit,
checkpointed under "projector", excluded from export and from GPT.num_params, because it is not part of GPT);
`aux_terms` computes the term from the tensors of the model's forward pass (the embedding output, the last
residual or final hidden state) and the unembedding matrix, which FSDP2 keeps gathered after the root's forward
until the backward pass (tests/test_distributed.py checks 2 processes against 1). Each returns a sum like
nitp_loss_terms' (sum, count): train.py divides every micro-batch's sum by the step's global count, which
`pair_masks` knows before the forward pass.

Imports torch, model.py and nitp_loss.py (the per-pair smooth-L1 and KL, the pair masks and the regulariser).
Nothing runs at import.
"""

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

import model as model_lib
from nitp_loss import PAIR_LOSSES, nitp_pair_mask, pairwise_cosine_penalty_terms, pairwise_pair_count


# ---------------------------------------------------------------------------- MTP
class MTPModule(nn.Module):
    """One depth of DeepSeek-V3's MTP: norms of the previous state and of the embedding, the 2d -> d projection,
    one Transformer block (MoE when the model has experts), the final norm before the shared unembedding."""

    def __init__(self, config: model_lib.GPTConfig):
        super().__init__()
        d, eps = config.d_model, config.norm_eps
        self.hidden_norm, self.embed_norm = model_lib.RMSNorm(d, eps), model_lib.RMSNorm(d, eps)
        self.proj = nn.Linear(2 * d, d, bias=False)
        self.block = model_lib.Block(config, moe=config.n_routed_experts > 0)
        self.out_norm = model_lib.RMSNorm(d, eps)


class MTPHead(nn.Module):
    """D sequential MTP modules, initialised like the model's own blocks (model.init_weights)."""

    def __init__(self, config: model_lib.GPTConfig, depth: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"MTP depth must be >= 1, got {depth}; DeepSeek-V3 uses 1")
        self.config = config
        self.depths = nn.ModuleList(MTPModule(config) for _ in range(depth))
        model_lib.init_weights(self, config, [m.block for m in self.depths])

    def forward(self, hidden, embeds):
        """hidden (B, T, d): the residual after the model's last block; embeds (B, T, d): the embedding output.
        -> ([out_norm(h^k) (B, T-k, d) for each depth k with T-k >= 1], [MoE balance loss of each such block])."""
        T, c = hidden.shape[1], self.config
        rope_dtype = torch.promote_types(hidden.dtype, torch.float32)
        cos, sin = model_lib.rope_cos_sin(T, c.head_size, c.rope_theta, hidden.device, rope_dtype)  # (T, hd/2)
        h, outs, balances = hidden, [], []
        for k, module in enumerate(self.depths, start=1):
            n = T - k  # positions t = 0..T-k-1: token t+k+1 is the last target there is
            if n < 1:
                break
            x = module.proj(torch.cat([module.hidden_norm(h[:, :n]), module.embed_norm(embeds[:, k:])], dim=-1))
            h, balance = module.block(x, cos[:n], sin[:n])  # (B, n, d) residual of depth k
            outs.append(module.out_norm(h))
            balances += [balance] if balance is not None else []
        return outs, balances


def mtp_position_count(batch: int, seq_len: int, depth: int) -> int:
    """The predictions MTP counts on (batch, seq_len) inputs: batch * sum_k (seq_len - k) over depths k < seq_len."""
    return batch * sum(seq_len - k for k in range(1, min(depth, seq_len - 1) + 1))


def mtp_terms(head: MTPHead, hidden, embeds, targets, head_weight, ce_chunk: int = 0):
    """(CE sum over depths and counted positions, count, [balance losses]). targets (B, T): y_t = x_{t+1}, so the
    target of depth k at position t is targets[:, t + k]. The shared unembedding head_weight (V, d) gets gradient,
    as the embedding does through `embeds` (DeepSeek-V3 shares and trains both)."""
    outs, balances = head(hidden, embeds)
    total = sum((model_lib.cross_entropy_sum(out, head_weight, targets[:, k:], ce_chunk)
                 for k, out in enumerate(outs, start=1)), torch.zeros((), device=hidden.device))
    return total, sum(out.shape[0] * out.shape[1] for out in outs), balances


# ---------------------------------------------------------------------------- NextLat
class LatentDynamics(nn.Module):
    """NextLat's latent dynamics model: h^_{t+1} = h_t + f([h_t; e_{t+1}]), f = LayerNorm(2d) -> Linear(2d, d) ->
    GELU -> Linear(d, d) -> GELU -> Linear(d, d) (docs/method.md, "Peers: MTP and NextLat"). Linear weights
    N(0, init_std^2) with zero biases, the last layer zero, so it starts as the identity on h_t."""

    def __init__(self, d_model: int, init_std: float = 0.02):
        super().__init__()
        d = d_model
        self.net = nn.Sequential(nn.LayerNorm(2 * d), nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(),
                                 nn.Linear(d, d))
        for layer in self.net[1::2]:  # the Linear layers
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.net[-1].weight)

    def forward(self, h, e):  # h, e (..., d) -> (..., d)
        return h + self.net(torch.cat([h, e], dim=-1))


def _kl_rows(pred, target, weight, target_logits=None):
    """KL(softmax(target_logits) || softmax(pred W^T)) per row, in >= float32; target_logits default target W^T."""
    target_logits = F.linear(target, weight) if target_logits is None else target_logits
    dtype = torch.promote_types(target_logits.dtype, torch.float32)
    return PAIR_LOSSES["kl"](F.linear(pred, weight).to(dtype), target_logits.to(dtype))


def nextlat_terms(head: LatentDynamics, hidden, embeds, head_weight, reg_weight: float, kl_weight: float,
                  pair_mask=None, logits=None, chunk: int = 0):
    """(reg_weight * smooth-L1 sum + kl_weight * KL sum, count, {"h": smooth-L1 sum, "kl": KL sum}) over the
    counted positions t < T-1. hidden (B, T, d): the final hidden states (after the final norm); embeds
    (B, T, d): the embedding output; pair_mask (B, T-1) bool or None (all count); logits (B, T, V): the model's
    own logits when it computed them (their [:, 1:] are the targets' logits, reused), else recomputed. chunk > 0:
    the KL over chunk positions at a time, logits recomputed in the backward (as model.cross_entropy_sum)."""
    target = hidden[:, 1:].detach()  # (B, T-1, d) h_{t+1}: stop-gradient
    pred = head(hidden[:, :-1], embeds[:, 1:].detach())  # (B, T-1, d) h^_{t+1}; gradient reaches h_t and f
    counted = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device) if pair_mask is None else pair_mask
    dtype = torch.promote_types(pred.dtype, torch.float32)
    reg = PAIR_LOSSES["smooth_l1"](pred.to(dtype), target.to(dtype))  # (B, T-1): mean over features, beta 1
    weight = head_weight.detach()  # frozen head: the KL shapes the predicted state, never the unembedding
    if logits is not None:
        kl = _kl_rows(pred, None, weight, logits[:, 1:].detach())
    elif chunk <= 0 or chunk >= counted.numel():
        kl = _kl_rows(pred, target, weight)
    else:
        rows = zip(pred.flatten(0, 1).split(chunk), target.flatten(0, 1).split(chunk))
        kl = torch.cat([torch.utils.checkpoint.checkpoint(_kl_rows, p, z, weight, use_reentrant=False)
                        for p, z in rows]).view(counted.shape)
    reg_sum, kl_sum = (torch.where(counted, x, torch.zeros_like(x)).sum() for x in (reg, kl))
    return reg_weight * reg_sum + kl_weight * kl_sum, counted.sum(), {"h": reg_sum, "kl": kl_sum}


# ---------------------------------------------------------------------------- the plug train.py calls
# Every objective except NTP and NITP (which train.py spells out) enters the step through these functions:
# the generic regulariser (cosreg), MTP and NextLat. Each term is a (sum, count) pair, as NITP's.
PEERS = ("cosreg", "mtp", "nextlat")


def build_head(cfg, mcfg):
    """The objective's training-only head in train.py's projector slot: MTP's modules, NextLat's latent dynamics
    model, or None (cosreg has no head)."""
    if cfg.objective == "mtp":
        return MTPHead(mcfg, cfg.mtp_depth)
    if cfg.objective == "nextlat":
        return LatentDynamics(mcfg.d_model, init_std=mcfg.init_std)
    return None


def weight(cfg) -> float:
    """The weight the term carries in the loss: nitp_weight for cosreg (the ablation swaps NITP's term for it),
    mtp_weight for MTP, 1 for NextLat, whose two weights are inside its term."""
    return {"cosreg": cfg.nitp_weight, "mtp": cfg.mtp_weight, "nextlat": 1.0}[cfg.objective]


def part_names(cfg) -> tuple:
    """The parts of the term that aux_terms returns and train.py logs (as loss_nextlat_h, loss_nextlat_kl)."""
    return ("h", "kl") if cfg.objective == "nextlat" else ()


def logit_heads(cfg) -> int:
    """How many more logits-sized tensors the term keeps for the backward (memory.plan_memory)."""
    return {"mtp": cfg.mtp_depth, "nextlat": 1}.get(cfg.objective, 0)


def flops_kwargs(cfg) -> dict:
    """The term's arguments to flops.flops_per_token."""
    return {"mtp": {"mtp_depth": cfg.mtp_depth}, "nextlat": {"nextlat": True}}.get(cfg.objective, {})


def taps(cfg, n_layer: int) -> set:
    """The residual streams the term reads from the model's forward pass: the embedding output (MTP, NextLat) and
    the residual after the last block (MTP)."""
    return {"cosreg": set(), "mtp": {0, n_layer}, "nextlat": {0}}[cfg.objective]


def pair_masks(cfg, inputs, separator=None):
    """(one mask or None per input, total count as 0-dim float64) over this process's inputs [(B, T)], known
    before any forward pass: NextLat's pairs (h_t, h_{t+1}) with NITP's mask at shift 1 (dropping pairs across
    the separator under mask_doc_boundary); cosreg's ordered pairs
    i != j of each sequence; MTP's positions of every depth whose target exists."""
    device = inputs[0].device
    if cfg.objective == "nextlat":
        masks = [nitp_pair_mask(x, 1, separator if cfg.mask_doc_boundary else None) for x in inputs]
        return masks, sum(m.sum() for m in masks).double()
    if cfg.objective == "cosreg":
        count = sum(pairwise_pair_count(torch.ones_like(x, dtype=torch.bool)) for x in inputs)
    else:
        count = sum(mtp_position_count(*x.shape, cfg.mtp_depth) for x in inputs)
    return [None] * len(inputs), torch.as_tensor(count, dtype=torch.float64, device=device)


def aux_terms(model, head, cfg, out, h, targets, pair_mask=None):
    """(term sum, MoE balance loss, parts or None) of the objective from the model's forward pass `out`
    (model.GPTOutput with the layers `taps` names) and h, train.py's last hidden state (cosreg's input). The peers
    read the unembedding matrix too (FSDP2's root parameter, still gathered after the forward), NextLat the model's
    logits when they were computed."""
    n_layer, balance, chunk = model.config.n_layer, out.balance_loss, cfg.ce_chunk or 0
    if cfg.objective == "cosreg":
        return pairwise_cosine_penalty_terms(h)[0], balance, None
    if cfg.objective == "mtp":
        total, _, balances = mtp_terms(head, out.layers[n_layer], out.layers[0], targets, model.lm_head.weight, chunk)
        if balances:  # the mean over every MoE layer, the model's and the MTP blocks'
            n_moe = sum(model.config.is_moe_block(i) for i in range(n_layer))
            balance = (balance * n_moe + sum(balances)) / (n_moe + len(balances))
        return total, balance, None
    total, _, parts = nextlat_terms(head, out.final_hidden, out.layers[0], model.lm_head.weight, cfg.nextlat_weight,
                                    cfg.nextlat_kl_weight, pair_mask, out.logits, chunk)
    return total, balance, parts
