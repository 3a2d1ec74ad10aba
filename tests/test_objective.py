"""Tests for objective.py: NITP's defaults per model, the pair counts train.py normalises by (the peers' too), the
terms of one forward pass against a hand-built loss, and the one formula that combines them. The peers' terms
against loops over positions: tests/test_peers.py."""

import dataclasses

import pytest
import torch

from support import objective
from model import GPT, get_preset
from nitp_loss import nitp_loss, pairwise_cosine_penalty
from support.objective import ObjectiveConfig, aux_pair_masks, forward_terms, resolve_objective, total_loss

EOT = 50256


def tiny(name="tiny-dense", **fields):
    return dataclasses.replace(get_preset(name), **fields)


def test_nitp_defaults_preset_then_rule_of_thumb_then_negative_index():
    assert get_preset("9bA1b").nitp_defaults() == (5, 0.8)  # the paper's 9B MoE: L5 of 24, lambda 0.8
    assert get_preset("45bA5.5b").nitp_defaults() == (5, 0.6)
    rule = tiny(nitp_target_layer=None, nitp_weight=None, n_layer=10)
    assert rule.nitp_defaults() == (2, 1.0)  # round(0.2 * 10), lambda 1.0
    assert rule.nitp_defaults(3, 0.0) == (3, 0.0)  # given values win; 0.0 is a value, not "unset"
    assert rule.nitp_defaults(-1) == (10, 1.0) and rule.nitp_defaults(-2) == (9, 1.0) and rule.nitp_defaults(-11)[0] == 0


def test_resolve_objective_fills_defaults_and_names_bad_values():
    mcfg = get_preset("tiny-moe")
    cfg = resolve_objective(ObjectiveConfig(target_layer=-2), mcfg)
    assert (cfg.target_layer, cfg.nitp_weight) == (mcfg.n_layer - 1, 1.0)
    for fields, match in [(dict(target_layer=-99), "outside"), (dict(objective="jtp"), "objective"),
                          (dict(loss_type="l1"), "loss_type"), (dict(projector="mlp"), "projector"),
                          (dict(attach="middle"), "attach")]:
        with pytest.raises(ValueError, match=match):
            resolve_objective(ObjectiveConfig(**fields), mcfg)


@pytest.mark.parametrize("fields", [dict(objective="nitp"), dict(objective="nitp", mask_doc_boundary=True, shift=2),
                                    dict(objective="cosreg"), dict(objective="ntp"), dict(objective="mtp", mtp_depth=3),
                                    dict(objective="nextlat", mask_doc_boundary=True)])
def test_aux_pair_count_is_the_sum_of_the_losses_own_counts(fields):
    """train.py divides each micro-batch's aux sum by aux_pair_masks' count over all micro-batches: it must be the
    sum of the counts nitp_loss_terms / pairwise_cosine_penalty_terms / the peers' terms report for them."""
    g = torch.Generator().manual_seed(0)
    cfg = resolve_objective(ObjectiveConfig(**fields), tiny())
    inputs = []
    for _ in range(3):
        x = torch.randint(0, 5, (2, 12), generator=g)
        inputs.append(torch.where(x == 4, EOT, x))
    masks, count = aux_pair_masks(cfg, inputs, EOT)
    assert count.dtype == torch.float64 and len(masks) == 3
    h = torch.randn(2, 12, 32, generator=g)
    head, weight = objective.build_projector(cfg, tiny()), torch.randn(50304, 32, generator=g)
    own = 0
    for x, mask in zip(inputs, masks):
        if cfg.objective == "nitp":
            own += objective.nitp_loss_terms(h, h, shift=cfg.shift, pair_valid=mask)[1].item()
        elif cfg.objective == "cosreg":
            own += objective.pairwise_cosine_penalty_terms(h)[1].item()
        elif cfg.objective == "mtp":
            own += objective.peers.mtp_terms(head, h, h, x, weight)[1]
        elif cfg.objective == "nextlat":
            own += objective.peers.nextlat_terms(head, h, h, weight, 1.0, 1.0, mask)[1].item()
    assert count.item() == own and (own > 0) == (cfg.objective != "ntp")


@pytest.mark.parametrize("fields", [dict(objective="nitp"), dict(objective="nitp", attach="pre_norm", shift=0),
                                    dict(objective="cosreg"), dict(objective="ntp")])
def test_forward_terms_match_a_hand_built_loss(fields):
    torch.manual_seed(0)
    mcfg = tiny()
    model = GPT(mcfg)
    cfg = resolve_objective(ObjectiveConfig(**fields), mcfg)
    projector = objective.build_projector(cfg, mcfg)
    x, y = torch.randint(0, 100, (2, 10)), torch.randint(0, 100, (2, 10))
    (mask,), count = aux_pair_masks(cfg, [x], EOT)
    terms = forward_terms(model, projector, cfg, x, y, mask)
    out = model(x, layers=(cfg.target_layer, mcfg.n_layer))
    ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), y.flatten(), reduction="sum")
    torch.testing.assert_close(terms.ce_sum, ce)  # same computation, same order: float32 equality up to rounding
    h = out.final_hidden if cfg.attach == "post_norm" else out.layers[mcfg.n_layer]
    if cfg.objective == "nitp":
        torch.testing.assert_close(terms.aux_sum / count.float(),
                                   nitp_loss(projector(h), out.layers[cfg.target_layer], shift=cfg.shift))
    elif cfg.objective == "cosreg":
        torch.testing.assert_close(terms.aux_sum / count.float(), pairwise_cosine_penalty(h))
    else:
        assert terms.aux_sum is None and projector is None


def test_total_loss_is_the_one_formula():
    assert total_loss(2.0, 0.5, 3.0, aux_weight=0.8, balance_coef=0.01) == 2.0 + 0.01 * 3.0 + 0.8 * 0.5
    assert total_loss(2.0, None, 3.0, aux_weight=0.8, balance_coef=0.0) == 2.0  # dense model, untrained aux term
    loss = total_loss(torch.tensor(1.0), torch.tensor(0.25), None, aux_weight=2.0)
    assert loss.item() == 1.5
