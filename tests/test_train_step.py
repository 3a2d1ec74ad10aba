"""Tests for train.py's step: NITP's defaults per model (config.resolve_objective), the pair counts the step
normalises by (the peers' too), the terms of one forward pass against a hand-built loss, and the loss the step
trains and logs (L_NTP + lambda * L_NITP, the balance term for MoE, none of the aux term before
nitp_start_step). The peers' terms against loops over positions: tests/test_peers.py."""

import dataclasses

import pytest
import torch
from test_train import data_dir, read_log, tiny_config  # noqa: F401 (data_dir is a fixture)

import config
import train
from config import ObjectiveConfig, resolve_objective
from model import GPT, get_preset
from nitp_loss import nitp_loss, nitp_loss_terms, pairwise_cosine_penalty, pairwise_cosine_penalty_terms
from support import peers
from train import aux_pair_masks, forward_terms

EOT = 50256


def tiny(name="tiny-dense", **fields):
    return dataclasses.replace(get_preset(name), **fields)


def test_nitp_defaults_preset_then_rule_of_thumb_then_negative_index():
    assert get_preset("9bA1b").nitp_defaults() == (5, 0.8)  # the paper's 9B MoE: L5 of 24, lambda 0.8
    assert get_preset("45bA5.5b").nitp_defaults() == (5, 0.6)
    rule = tiny(nitp_target_layer=None, nitp_weight=None, n_layer=10)
    assert rule.nitp_defaults() == (2, 1.0)  # round(0.2 * 10), lambda 1.0
    assert rule.nitp_defaults(3, 0.0) == (3, 0.0)  # given values win; 0.0 is a value, not "unset"
    assert rule.nitp_defaults(-1) == (10, 1.0) and rule.nitp_defaults(-2) == (9, 1.0)
    assert rule.nitp_defaults(-11)[0] == 0


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
    """train_step divides each micro-batch's aux sum by aux_pair_masks' count over all micro-batches: it must be the
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
    head, weight = train.build_projector(cfg, tiny()), torch.randn(50304, 32, generator=g)
    own = 0
    for x, mask in zip(inputs, masks):
        if cfg.objective == "nitp":
            own += nitp_loss_terms(h, h, shift=cfg.shift, pair_valid=mask)[1].item()
        elif cfg.objective == "cosreg":
            own += pairwise_cosine_penalty_terms(h)[1].item()
        elif cfg.objective == "mtp":
            own += peers.mtp_terms(head, h, h, x, weight)[1]
        elif cfg.objective == "nextlat":
            own += peers.nextlat_terms(head, h, h, weight, 1.0, 1.0, mask)[1].item()
    assert count.item() == own and (own > 0) == (cfg.objective != "ntp")


@pytest.mark.parametrize("fields", [dict(objective="nitp"), dict(objective="nitp", attach="pre_norm", shift=0),
                                    dict(objective="cosreg"), dict(objective="ntp")])
def test_forward_terms_match_a_hand_built_loss(fields):
    torch.manual_seed(0)
    mcfg = tiny()
    model = GPT(mcfg)
    cfg = resolve_objective(ObjectiveConfig(**fields), mcfg)
    projector = train.build_projector(cfg, mcfg)
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


@pytest.mark.parametrize("fields", [dict(objective="nitp", nitp_weight=0.5), dict(objective="ntp"),
                                    dict(objective="nitp", nitp_start_step=2), dict(objective="mtp"),
                                    dict(objective="nitp", preset="tiny-moe", nitp_weight=0.8)])
def test_the_step_trains_and_logs_ntp_plus_lambda_nitp(tmp_path, data_dir, fields):  # noqa: F811
    """Every train line's loss is loss_ntp + weight * the aux loss (+ balance_coef * loss_balance with experts), in
    float64 over the logged means; before nitp_start_step the aux term is logged but carries no weight."""
    result = train.train(tiny_config(tmp_path / "out", data_dir, max_steps=3, **fields))
    cfg, mcfg = config.resolve_config(tiny_config(tmp_path / "out", data_dir, **fields))
    records = [r for r in read_log(tmp_path / "out") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3] and result.step == 3
    for r in records:
        expected = r["loss_ntp"]
        if mcfg.n_routed_experts:
            expected = expected + mcfg.balance_coef * r["loss_balance"]
        if cfg.objective != "ntp":
            trained = r["step"] > cfg.nitp_start_step
            expected = expected + (train.aux_weight(cfg) if trained else 0.0) * r[f"loss_{cfg.objective}"]
            assert r[f"loss_{cfg.objective}"] > 0
        assert r["loss"] == expected
        assert (r["loss"] > r["loss_ntp"]) == (cfg.objective != "ntp" and r["step"] > cfg.nitp_start_step)


def test_aux_weight_is_lambda_for_nitp_and_the_peers_own_otherwise():
    mcfg = tiny()
    nitp = resolve_objective(ObjectiveConfig(objective="nitp", nitp_weight=0.8), mcfg)
    assert train.aux_weight(nitp) == 0.8 and train.aux_weight(dataclasses.replace(nitp, objective="ntp")) == 0
    assert train.aux_weight(dataclasses.replace(nitp, objective="cosreg")) == 0.8  # the ablation swaps NITP's term
    assert train.aux_weight(resolve_objective(ObjectiveConfig(objective="mtp"), mcfg)) == 0.3  # DeepSeek-V3's
    assert train.aux_weight(resolve_objective(ObjectiveConfig(objective="nextlat"), mcfg)) == 1.0
