"""objective.py: the training objective of one forward pass, assembled in one place.

    loss = CE + balance_coef * MoE balance loss + aux_weight(cfg) * aux

aux is NITP (the projector of the last hidden state h_t against the implicit token z_{t+shift} taken from
block `target_layer` of the same pass, nitp_loss.py), the ablation table's generic regulariser (the mean
pairwise cosine of h), or one of NITP's peers (peers.py): DeepSeek-V3's multi-token prediction (mtp) or
next-latent prediction (nextlat). ObjectiveConfig holds every switch of the paper's ablation table with the
paper's choice as default (docs/method.md, "Ablations and their flags") and the peers' switches with their
sources' defaults (docs/method.md, "Peers: MTP and NextLat"); train.py's TrainConfig extends it, bench.py builds
one directly. Each term comes out of `forward_terms` as a (sum, count) pair so that train.py can divide every
micro-batch by the global count of the step (so the step does not depend on how the batch is split over
micro-batches and processes); `total_loss` is the one formula that combines the terms, for the backward pass
and for the logs alike, and `aux_weight` the one place that says which weight the aux term carries.

Imports torch, model.py, nitp_loss.py and peers.py. Nothing runs at import.
"""

import dataclasses
from dataclasses import dataclass

import torch

from support import peers
from nitp_loss import (HEAD_KINDS, LOSS_TYPES, NITPHead, nitp_loss_terms, nitp_pair_mask, pairwise_cosine_penalty_terms,
                       pairwise_pair_count)

OBJECTIVES, ATTACH = ("ntp", "nitp", "cosreg", "mtp", "nextlat"), ("post_norm", "pre_norm")


# ---------------------------------------------------------------------------- configuration
@dataclass
class ObjectiveConfig:
    objective: str = "nitp"                 # ntp | nitp | cosreg | mtp | nextlat
    nitp_weight: float | None = None        # lambda (also cosreg's weight); None: the preset's, else 1.0
    target_layer: int | None = None         # 0 = embedding, k = after block k, -1 = last; None: the preset's
    shift: int = 1                          # h_t predicts z_{t+shift}; 0 = the current-step ablation
    loss_type: str = "cosine"               # cosine | mse | smooth_l1 | kl
    stop_grad: bool = True                  # no gradient into the target
    nitp_start_step: int = 0                # delayed start: before it the term is logged, not trained
    projector: str = "swiglu"               # swiglu | linear | none
    projector_hidden: int | None = None     # swiglu width; None: 4 * d_model
    attach: str = "post_norm"               # h = final hidden after the final norm | pre_norm: after the last block
    mask_doc_boundary: bool = False         # drop pairs that cross an <|endoftext|> (nitp_loss.document_pair_mask)
    ce_chunk: int | None = None             # cross-entropy over chunks of this many positions, logits recomputed in
                                            # the backward (model.cross_entropy_sum); 0: full logits; None: chunks
                                            # on CUDA for vocabularies over 65,536, full logits otherwise
    # the peers (peers.py; docs/method.md, "Peers: MTP and NextLat"); nitp_start_step delays their term too
    mtp_depth: int = 1                      # D sequential MTP modules (DeepSeek-V3: 1)
    mtp_weight: float = 0.3                 # MTP's lambda (DeepSeek-V3: 0.3, then 0.1 for the last 4.8T tokens)
    nextlat_weight: float = 1.0             # NextLat's lambda on the smooth-L1 next-latent regression
    nextlat_kl_weight: float = 1.0          # NextLat's lambda on the KL of the next-token distributions


def resolve_objective(cfg, mcfg):
    """cfg (an ObjectiveConfig or a subclass) with target_layer and nitp_weight resolved for the model mcfg
    (model.GPTConfig.nitp_defaults: the flag, else the preset's, else the rule of thumb); ValueError naming a
    bad value and its fix."""
    target, weight = mcfg.nitp_defaults(cfg.target_layer, cfg.nitp_weight)
    cfg = dataclasses.replace(cfg, target_layer=target, nitp_weight=weight)
    for ok, message in [
        (cfg.objective in OBJECTIVES, f"objective={cfg.objective!r}; use one of {OBJECTIVES}"),
        (0 <= target <= mcfg.n_layer, f"target_layer={target} is outside [0, n_layer={mcfg.n_layer}] (0 = embedding "
                                      "output, k = after block k, -1 = after the last); pass --target_layer=K "
                                      "in that range"),
        (cfg.loss_type in LOSS_TYPES, f"loss_type={cfg.loss_type!r}; use one of {LOSS_TYPES}"),
        (cfg.projector in HEAD_KINDS, f"projector={cfg.projector!r}; use one of {HEAD_KINDS}"),
        (cfg.attach in ATTACH, f"attach={cfg.attach!r}; use one of {ATTACH}"),
        (cfg.mtp_depth >= 1, f"mtp_depth={cfg.mtp_depth} must be >= 1 (DeepSeek-V3 uses 1)"),
        (min(cfg.mtp_weight, cfg.nextlat_weight, cfg.nextlat_kl_weight) >= 0,
         "mtp_weight, nextlat_weight and nextlat_kl_weight must be >= 0: a negative weight rewards the opposite"),
    ]:
        if not ok:
            raise ValueError(message)
    return cfg


def build_projector(cfg, mcfg):
    """The aux objective's training-only head, or None (ntp, cosreg): NITP's projector, MTP's modules or NextLat's
    latent dynamics model. Made after the model so that the model's initial weights are the same for every
    objective (same seed, same draws)."""
    if cfg.objective == "nitp":
        return NITPHead(mcfg.d_model, cfg.projector_hidden, cfg.projector, init_std=mcfg.init_std)
    if cfg.objective == "mtp":
        return peers.MTPHead(mcfg, cfg.mtp_depth)
    if cfg.objective == "nextlat":
        return peers.LatentDynamics(mcfg.d_model, init_std=mcfg.init_std)
    return None


def aux_weight(cfg) -> float:
    """The weight of the aux term in total_loss: nitp_weight for nitp and cosreg, mtp_weight for mtp; 1 for
    nextlat, whose two weights (nextlat_weight, nextlat_kl_weight) are inside its term; 0 for ntp."""
    return {"nitp": cfg.nitp_weight, "cosreg": cfg.nitp_weight, "mtp": cfg.mtp_weight, "nextlat": 1.0}.get(
        cfg.objective, 0.0)


def aux_flops_kwargs(cfg, mcfg) -> dict:
    """The aux term's arguments to flops.flops_per_token: the SwiGLU projector's width for nitp (none for the
    linear and identity projectors, whose FLOPs the accounting leaves out), the depth for mtp, nextlat."""
    if cfg.objective == "nitp" and cfg.projector == "swiglu":
        return {"projector_hidden": cfg.projector_hidden or 4 * mcfg.d_model}
    return {"mtp": {"mtp_depth": cfg.mtp_depth}, "nextlat": {"nextlat": True}}.get(cfg.objective, {})


def aux_part_names(cfg) -> tuple:
    """The parts of the aux term that LossTerms.aux_parts holds and train.py logs (as loss_nextlat_h, ...)."""
    return ("h", "kl") if cfg.objective == "nextlat" else ()


def aux_logit_heads(cfg) -> int:
    """How many more logits-sized tensors the aux term keeps for the backward (memory.plan_memory)."""
    return {"mtp": cfg.mtp_depth, "nextlat": 1}.get(cfg.objective, 0)


def balance_weight(mcfg) -> float:
    """The MoE balance loss's weight: balance_coef for a model with routed experts, else 0."""
    return mcfg.balance_coef if mcfg.n_routed_experts else 0.0


# ---------------------------------------------------------------------------- the terms of one pass
def aux_pair_masks(cfg, inputs, separator):
    """(one mask per input, total pair count as 0-dim float64) of the aux objective over this process's input
    batches [(B, T)], known before any forward pass (every position is a real token). NITP: nitp_loss's pair
    mask (dropping pairs across a separator when cfg.mask_doc_boundary); nextlat: the same mask at shift 1
    (the pairs (h_t, h_{t+1})); cosreg: the ordered pairs i != j of each sequence; mtp: the positions of every
    depth whose target exists (peers.mtp_position_count); ntp: no pairs."""
    device = inputs[0].device
    if cfg.objective in ("nitp", "nextlat"):
        shift = cfg.shift if cfg.objective == "nitp" else 1
        masks = [nitp_pair_mask(x, shift, separator if cfg.mask_doc_boundary else None) for x in inputs]
        return masks, sum(m.sum() for m in masks).double()
    if cfg.objective == "cosreg":
        count = sum(pairwise_pair_count(torch.ones_like(x, dtype=torch.bool)) for x in inputs)
    elif cfg.objective == "mtp":
        count = sum(peers.mtp_position_count(*x.shape, cfg.mtp_depth) for x in inputs)
    else:
        count = 0
    return [None] * len(inputs), torch.as_tensor(count, dtype=torch.float64, device=device)


@dataclass
class LossTerms:
    ce_sum: torch.Tensor                # 0-dim: summed next-token cross-entropy over the batch's positions
    aux_sum: torch.Tensor | None        # 0-dim: summed aux loss over the counted pairs (None for ntp)
    balance: torch.Tensor               # 0-dim: MoE balance loss of this micro-batch (0 for a dense model)
    aux_parts: dict | None = None       # nextlat: {"h": smooth-L1 sum, "kl": KL sum}, unweighted, same count


def forward_terms(model, projector, cfg, x, y, pair_mask=None, aux_trained=True) -> LossTerms:
    """One forward pass of `model` on x (B, T) with targets y (B, T) -> LossTerms. The NITP target is
    layers[target_layer] of this same pass; h is the final hidden state (attach=post_norm) or the residual
    after the last block (pre_norm). The peers read the embedding output (layers[0]), MTP the residual after the
    last block, NextLat the final hidden state (attach does not apply to them), both the unembedding matrix, and
    NextLat the model's logits when the loss head is not chunked. Before nitp_start_step (aux_trained=False) the
    aux term is computed without gradient: logged, not trained. pair_mask: from aux_pair_masks."""
    n_layer = len(model.blocks) if hasattr(model, "blocks") else model.config.n_layer
    taps = {cfg.target_layer} | ({n_layer} if cfg.attach == "pre_norm" or cfg.objective == "mtp" else set())
    taps |= {0} if cfg.objective in ("mtp", "nextlat") else set()
    chunk = cfg.ce_chunk or 0
    logits = cfg.objective == "nextlat" and chunk == 0  # its KL reuses the next position's logits
    out = model(x, layers=tuple(sorted(taps)), compute_logits=logits, targets=y, ce_chunk=chunk)
    h = out.final_hidden if cfg.attach == "post_norm" else out.layers[n_layer]  # (B, T, d)
    aux_sum, balance, parts = None, out.balance_loss, None
    with torch.set_grad_enabled(torch.is_grad_enabled() and aux_trained):
        if cfg.objective == "nitp":
            aux_sum, _ = nitp_loss_terms(projector(h), out.layers[cfg.target_layer], shift=cfg.shift,
                                         loss_type=cfg.loss_type, stop_grad=cfg.stop_grad, pair_valid=pair_mask)
        elif cfg.objective == "cosreg":
            aux_sum, _ = pairwise_cosine_penalty_terms(h)
        elif cfg.objective == "mtp":  # the unembedding is FSDP2's root parameter, still gathered after the forward
            aux_sum, _, balances = peers.mtp_terms(projector, out.layers[n_layer], out.layers[0], y,
                                                   model.lm_head.weight, chunk)
            if balances:  # the mean over every MoE layer, the model's and the MTP blocks'
                n_moe = sum(model.config.is_moe_block(i) for i in range(n_layer))
                balance = (balance * n_moe + sum(balances)) / (n_moe + len(balances))
        elif cfg.objective == "nextlat":
            aux_sum, _, parts = peers.nextlat_terms(projector, out.final_hidden, out.layers[0], model.lm_head.weight,
                                                    cfg.nextlat_weight, cfg.nextlat_kl_weight, pair_mask, out.logits,
                                                    chunk)
    return LossTerms(out.ce_sum, aux_sum, balance, parts)


def total_loss(loss_ntp, loss_aux=None, loss_balance=None, aux_weight=0.0, balance_coef=0.0):
    """The objective from its normalised parts (tensors or floats): loss_ntp + balance_coef * loss_balance +
    aux_weight * loss_aux, a part left out when it is None (so a dense model or an untrained aux term adds
    nothing to the graph)."""
    loss = loss_ntp
    if loss_balance is not None and balance_coef:
        loss = loss + balance_coef * loss_balance
    if loss_aux is not None:
        loss = loss + aux_weight * loss_aux
    return loss
