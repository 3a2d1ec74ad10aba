"""Tests for peers.py and the peers' place in train.py, export.py and the FLOPs accounting: MTP and
NextLat against naive references that loop over positions, where their gradients stop, the shift and masking at
the ends of a window, weight 0 is NTP bit for bit, the heads are trained, checkpointed and never exported, and
their FLOPs by hand. The 2-process test is in tests/test_distributed.py."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from test_train import assert_same_weights, data_dir, read_log, tiny_config  # noqa: F401 (data_dir is a fixture)

import config
import train
from config import ObjectiveConfig, resolve_objective
from model import GPT, get_preset
from support import checkpoint, flops, memory, peers
from support.flops import flops_per_token
from tools import compare, export
from train import aux_pair_masks, forward_terms

EOT = 50256


def tiny(name="tiny-dense", **fields):
    return dataclasses.replace(get_preset(name), vocab_size=97, **fields)


def setup(name, preset="tiny-dense", T=7, B=2, double=True, **fields):
    """A tiny model, a resolved objective, its head (randomised where it starts at zero) and a batch."""
    torch.manual_seed(0)
    mcfg = tiny(preset)
    model = GPT(mcfg)
    cfg = resolve_objective(ObjectiveConfig(objective=name, **fields), mcfg)
    head = train.build_projector(cfg, mcfg)
    if name == "nextlat":  # its last layer starts at zero (the identity): give it something to compute
        torch.nn.init.normal_(head.net[-1].weight, std=0.3)
    if double:
        model, head = model.double(), head.double()
    x, y = torch.randint(0, 90, (B, T)), torch.randint(0, 90, (B, T))
    return mcfg, model, cfg, head, x, y


# ---------------------------------------------------------------------------- MTP
def naive_mtp(model, head, x, y):
    """(CE sum, count) one prediction at a time: for each sequence b, depth k and position i, rerun the model and
    the first k MTP modules on the prefix x[b, :i+1] only (causal attention: position i sees nothing later), with
    RMS norms and the 2d -> d projection written out, and score token x[b, i+k+1] = y[b, i+k]."""
    c, total, count = model.config, torch.zeros((), dtype=torch.float64), 0
    W = model.lm_head.weight
    for b in range(x.shape[0]):
        for k in range(1, len(head.depths) + 1):
            for i in range(x.shape[1] - k):  # no target beyond the window: i + k <= T - 1
                h = model(x[b:b + 1, :i + 1], layers=(c.n_layer,)).layers[c.n_layer]  # (1, i+1, d)
                for j, m in enumerate(head.depths[:k], start=1):
                    e = model.embed(x[b:b + 1, j:j + i + 1])  # (1, i+1, d) emb(x_{t+j})
                    cat = torch.cat([F.rms_norm(h, (c.d_model,), m.hidden_norm.weight, c.norm_eps),
                                     F.rms_norm(e, (c.d_model,), m.embed_norm.weight, c.norm_eps)], dim=-1)
                    cos, sin = peers.model_lib.rope_cos_sin(i + 1, c.head_size, c.rope_theta, dtype=h.dtype)
                    h, _ = m.block(cat @ m.proj.weight.T, cos, sin)
                last = F.rms_norm(h[0, -1], (c.d_model,), head.depths[k - 1].out_norm.weight, c.norm_eps)
                total = total - F.log_softmax(W @ last, dim=-1)[y[b, i + k]]
                count += 1
    return total, count


@pytest.mark.parametrize("preset, depth", [("tiny-dense", 1), ("tiny-dense", 3), ("tiny-moe", 2)])
def test_mtp_matches_a_naive_loop_over_positions(preset, depth):
    mcfg, model, cfg, head, x, y = setup("mtp", preset, T=6, mtp_depth=depth)
    (mask,), count = aux_pair_masks(cfg, [x], EOT)
    terms = forward_terms(model, head, cfg, x, y, mask)
    reference, n = naive_mtp(model, head, x, y)
    assert count.item() == n == 2 * sum(6 - k for k in range(1, depth + 1))
    # the loss head takes its logits to float32 (model.cross_entropy_sum), the reference stays in float64
    torch.testing.assert_close(terms.aux_sum.double(), reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms.ce_sum, model(x, targets=y).ce_sum)  # CE is untouched by the aux term
    if preset == "tiny-moe":  # the MTP blocks' balance losses join the model's: the mean over all MoE layers
        model_balance = model(x).balance_loss
        assert terms.balance.item() != pytest.approx(model_balance.item())
        assert 1.0 <= terms.balance.item() < float(mcfg.n_routed_experts)


def test_mtp_at_sequence_ends_and_where_its_gradient_goes():
    """Depth k reads h^{k-1} at positions 0..T-k-1 and emb(x_{t+k}): the last position's state and the first token's
    embedding never enter the loss (zero gradient), the shared unembedding and every other position do; a depth
    with no target left in the window (k >= T) is skipped, not counted."""
    _, model, cfg, head, x, y = setup("mtp", T=4, mtp_depth=2)
    hidden = torch.randn(2, 4, 32, dtype=torch.float64, requires_grad=True)
    embeds = torch.randn(2, 4, 32, dtype=torch.float64, requires_grad=True)
    weight = model.lm_head.weight.detach().clone().requires_grad_()
    total, count, _ = peers.mtp_terms(head, hidden, embeds, y, weight)
    total.backward()
    assert count == 2 * (3 + 2) == peers.mtp_position_count(2, 4, 2)
    assert (hidden.grad[:, -1] == 0).all() and (hidden.grad[:, :-1].abs().sum(-1) > 0).all()
    assert (embeds.grad[:, 0] == 0).all() and (embeds.grad[:, 1:].abs().sum(-1) > 0).all()
    assert weight.grad.abs().sum() > 0  # DeepSeek-V3 trains the shared head through MTP
    _, model, cfg, head, x, y = setup("mtp", T=2, mtp_depth=3)
    outs, _ = head(torch.randn(1, 2, 32, dtype=torch.float64), torch.randn(1, 2, 32, dtype=torch.float64))
    assert [o.shape[1] for o in outs] == [1] and peers.mtp_position_count(1, 2, 3) == 1
    assert aux_pair_masks(cfg, [x], EOT)[1].item() == 2 * 1


# ---------------------------------------------------------------------------- NextLat
def naive_nextlat(model, head, x, cfg, pair_mask=None):
    """(weighted sum, count, smooth-L1 sum, KL sum) one position at a time, the dynamics MLP written out."""
    out = model(x)
    h, e, W = out.final_hidden, model.embed(x), model.lm_head.weight
    ln, l1, _, l2, _, l3 = head.net
    reg = kl = torch.zeros((), dtype=torch.float64)
    count = 0
    for b in range(x.shape[0]):
        for t in range(x.shape[1] - 1):  # h_{t+1} must exist: the last position predicts nothing
            if pair_mask is not None and not pair_mask[b, t]:
                continue
            z = F.layer_norm(torch.cat([h[b, t], e[b, t + 1]]), (2 * h.shape[-1],), ln.weight, ln.bias)
            pred = h[b, t] + l3(F.gelu(l2(F.gelu(l1(z)))))
            diff = (pred - h[b, t + 1]).abs()
            reg = reg + torch.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).mean()
            p_true = F.softmax(W @ h[b, t + 1], dim=-1)
            kl = kl + (p_true * (p_true.log() - F.log_softmax(W @ pred, dim=-1))).sum()
            count += 1
    return cfg.nextlat_weight * reg + cfg.nextlat_kl_weight * kl, count, reg, kl


@pytest.mark.parametrize("fields", [dict(), dict(nextlat_weight=0.7, nextlat_kl_weight=0.2, mask_doc_boundary=True),
                                    dict(ce_chunk=5, nextlat_kl_weight=2.0)])
def test_nextlat_matches_a_naive_loop_over_positions(fields):
    """The logits reused from the model's CE (ce_chunk=0) and recomputed in chunks (ce_chunk > 0) give the same
    KL; the document mask drops the pair whose h_t sits on a separator."""
    _, model, cfg, head, x, y = setup("nextlat", T=8, **fields)
    x[0, 3] = 96  # a separator inside the tiny vocabulary
    (mask,), count = aux_pair_masks(cfg, [x], 96)
    terms = forward_terms(model, head, cfg, x, y, mask)
    reference, n, reg, kl = naive_nextlat(model, head, x, cfg, mask if cfg.mask_doc_boundary else None)
    assert count.item() == n == 2 * 7 - (1 if cfg.mask_doc_boundary else 0)
    torch.testing.assert_close(terms.aux_sum, reference)
    torch.testing.assert_close(terms.aux_parts["h"], reg)
    torch.testing.assert_close(terms.aux_parts["kl"], kl)
    assert train.aux_weight(cfg) == peers.weight(cfg) == 1.0  # the two weights are inside the term


def test_nextlat_gradient_stops_at_the_target_and_the_frozen_head():
    _, model, cfg, head, x, y = setup("nextlat", T=5)
    hidden = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    embeds = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    weight = model.lm_head.weight.detach().clone().requires_grad_()
    total, count, _ = peers.nextlat_terms(head, hidden, embeds, weight, 1.0, 1.0)
    total.backward()
    assert count.item() == 2 * 4
    assert (hidden.grad[:, -1] == 0).all()  # h_{T-1} is only ever a target: stop-gradient
    assert (hidden.grad[:, :-1].abs().sum(-1) > 0).all()  # h_t learns to predict its successor
    assert embeds.grad is None and weight.grad is None  # the token's embedding and the head: detached
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


# ---------------------------------------------------------------------------- configuration and FLOPs
def test_config_weights_and_errors():
    mcfg = tiny()
    cfg = resolve_objective(ObjectiveConfig(objective="mtp"), mcfg)
    assert (cfg.mtp_depth, cfg.mtp_weight, peers.weight(cfg)) == (1, 0.3, 0.3)  # DeepSeek-V3's
    nitp = resolve_objective(ObjectiveConfig(objective="nitp", nitp_weight=0.8), mcfg)
    assert peers.weight(dataclasses.replace(nitp, objective="cosreg")) == 0.8  # cosreg takes NITP's lambda
    for fields, match in [(dict(mtp_depth=0), "mtp_depth"), (dict(mtp_weight=-1.0), "mtp_weight"),
                          (dict(nextlat_kl_weight=-0.1), "nextlat_kl_weight")]:
        with pytest.raises(ValueError, match=match):
            resolve_objective(ObjectiveConfig(objective="mtp", **fields), mcfg)
    with pytest.raises(ValueError, match="mtp_depth=8 must be below seq_len=8"):
        config.resolve_config(train.TrainConfig(preset="tiny-dense", objective="mtp", mtp_depth=8, seq_len=8))
    with pytest.raises(ValueError, match="finite"):
        config.resolve_config(train.TrainConfig(preset="tiny-dense", nextlat_weight=float("nan"), seq_len=8))
    assert compare.train_flags(compare.parse_args([]), "nextlat", 1, compare.Path("o"))[0] == "--objective=nextlat"
    assert compare.VARIANTS["mtp"] == {"objective": "mtp"}


def test_flops_of_the_peers_by_hand():
    c = tiny("tiny-moe")  # V 97, d 32, 4 q / 2 kv heads of 8, 8 experts top-2 + 1 shared of 16: MTP's block is MoE
    T = 16
    block = 6 * (32 * 32 + 2 * 32 * 16 + 32 * 32) + 6 * 32 * T + 6 * (3 * 32 * 16 * 3 + 32 * 8)
    ntp = flops_per_token(c, T)["ntp"]
    mtp = flops_per_token(c, T, mtp_depth=2)
    assert mtp["ntp"] == ntp and mtp["aux_extra"] == 2 * (6 * 2 * 32 * 32 + block + 6 * 97 * 32)
    nextlat = flops_per_token(c, T, nextlat=True)
    assert nextlat["aux_extra"] == 6 * 4 * 32 * 32 + 4 * 97 * 32 and nextlat["aux_ratio"] == nextlat["aux_extra"] / ntp
    assert flops.aux_flops_kwargs(resolve_objective(ObjectiveConfig(objective="mtp", mtp_depth=2), c), c) == {
        "mtp_depth": 2}
    small = get_preset("small")  # the README's figures
    assert round(100 * flops_per_token(small, 256, mtp_depth=1)["aux_ratio"], 1) == 77.0
    assert round(100 * flops_per_token(small, 256, nextlat=True)["aux_ratio"], 1) == 49.2


def test_memory_plan_counts_the_peers_logits():
    mcfg = tiny()
    plain, mtp = (memory.plan_memory(mcfg, 1, 2, 16, 1000, 4, aux_logit_heads=n) for n in (0, 2))
    assert mtp.logits == 3 * plain.logits and mtp.total - plain.total == 2 * plain.logits
    assert peers.logit_heads(resolve_objective(ObjectiveConfig(objective="mtp", mtp_depth=2), mcfg)) == 2


# ---------------------------------------------------------------------------- training, checkpoints, export
@pytest.mark.parametrize("name, zero", [("mtp", dict(mtp_weight=0.0)),
                                        ("nextlat", dict(nextlat_weight=0.0, nextlat_kl_weight=0.0))])
def test_weight_zero_is_bitwise_ntp(tmp_path, data_dir, name, zero):  # noqa: F811
    ntp = train.train(tiny_config(tmp_path / "ntp", data_dir, objective="ntp", max_steps=3, eval_batches=0))
    off = train.train(tiny_config(tmp_path / "off", data_dir, objective=name, max_steps=3, eval_batches=0, **zero))
    on = train.train(tiny_config(tmp_path / "on", data_dir, objective=name, max_steps=3, eval_batches=0))
    assert_same_weights(ntp.model, off.model)
    grad_norms = [[r["grad_norm"] for r in read_log(tmp_path / d) if r["kind"] == "train"] for d in ("ntp", "off")]
    assert grad_norms[0] == grad_norms[1]
    assert any(not torch.equal(a, b) for a, b in zip(ntp.model.state_dict().values(), on.model.state_dict().values()))


@pytest.mark.parametrize("name", ["mtp", "nextlat"])
def test_peer_runs_log_checkpoint_and_export_without_their_head(tmp_path, data_dir, name):  # noqa: F811
    cfg = tiny_config(tmp_path / "run", data_dir, objective=name, max_steps=4, eval_batches=1,
                      **({"preset": "tiny-moe"} if name == "mtp" else {"mask_doc_boundary": True}))
    result = train.train(cfg)
    log = read_log(tmp_path / "run")
    lines = [r for r in log if r["kind"] == "train"]
    key = f"loss_{name}"
    for r in lines:
        assert r["loss"] == pytest.approx(r["loss_ntp"] + (0.3 if name == "mtp" else 1.0) * r[key]
                                          + (0.003 * r["loss_balance"] if name == "mtp" else 0.0), rel=1e-6)
        if name == "nextlat":  # the logged parts, unweighted: at weights 1, 1 they add up to the term
            assert r[key] == pytest.approx(r["loss_nextlat_h"] + r["loss_nextlat_kl"], rel=1e-6)
    assert lines[0][key] > 0 and f"val_{key}" in [r for r in log if r["kind"] == "eval"][-1]
    head_params = sum(p.numel() for p in result.projector.parameters())
    assert log[0]["projector_params"] == head_params > 0
    saved = checkpoint.saved_keys(checkpoint.latest(tmp_path / "run"))
    assert any(k.startswith("model.projector.") for k in saved)
    deployed, _ = checkpoint.load_model(tmp_path / "run")  # the model alone: the head is not part of GPT
    _, mcfg = config.resolve_config(cfg)
    assert deployed.num_params() == GPT(mcfg).num_params() == log[0]["num_params"]
    assert_same_weights(deployed, result.model)
    if name == "nextlat":  # dense: exportable; every exported tensor is the model's, none the head's
        out = export.export(tmp_path / "run", tmp_path / "hf")
        from safetensors.torch import load_file
        exported = load_file(f"{out}/model.safetensors")
        assert sum(t.numel() for t in exported.values()) == deployed.num_params()
        assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == mcfg.n_layer
