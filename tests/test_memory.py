"""Tests for memory.py: the parameter count against the model (every preset, built on the meta device) and by
hand, the sharded state bytes, the per-block activation formula against what autograd really saves (CPU,
fp32), activation checkpointing, the logits term, the margin, the advice's flags and figures, the tables."""

import re

import pytest
import torch

import model as model_lib
from support import memory

GIB = 2**30


# ---------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("name", list(model_lib.PRESETS))
def test_count_params_equals_the_model(name):
    cfg = model_lib.PRESETS[name]
    with torch.device("meta"):  # no memory: even 45bA5.5b builds in a blink
        gpt = model_lib.GPT(cfg)
    assert memory.count_params(cfg) == gpt.num_params()


def test_count_params_by_hand():
    # tiny-dense: V 50304, d 32, 2 blocks, 4 query + 2 kv heads of 8, d_ff 64, tied, no bias
    V, d, hd, d_ff = 50304, 32, 8, 64
    block = 2 * d + d * (4 + 2 * 2) * hd + 4 * hd * d + 3 * d * d_ff  # norms, qkv, o, gate|up + down
    assert memory.count_params(model_lib.PRESETS["tiny-dense"]) == V * d + 2 * block + d == 1_628_320
    # tiny-moe: the same attention; block 0 dense, blocks 1-2: router, 8 experts of width 16, 1 shared
    moe_block = 2 * d + d * 8 * hd + 4 * hd * d + d * 8 + 8 * 3 * d * 16 + 3 * d * 16
    assert memory.count_params(model_lib.PRESETS["tiny-moe"]) == V * d + block + 2 * moe_block + d == 1_653_472
    # dense-0.5b: V 152064, d 896, 24 blocks, 14 query + 2 kv heads of 64, qkv bias, d_ff 4864, tied
    V, d, hd, d_ff = 152064, 896, 64, 4864
    qkv = (14 + 2 * 2) * hd
    block = 2 * d + d * qkv + qkv + 14 * hd * d + 3 * d * d_ff
    n = V * d + 24 * block + d
    assert memory.count_params(model_lib.PRESETS["dense-0.5b"]) == n == 494_147_456
    # fp32 params + fp32 grads + AdamW's two fp32 states = 16 bytes per parameter, sharded over the world
    plan = memory.plan_memory(model_lib.PRESETS["dense-0.5b"], world=8, micro_batch=1, seq_len=128)
    assert plan.params + plan.grads + plan.optimizer == 16 * n // 8
    assert (plan.params, plan.optimizer) == (4 * n // 8, 8 * n // 8)


def test_untied_root_counts_the_lm_head():
    cfg = model_lib.PRESETS["9bA1b"]
    assert memory.root_params(cfg) == 2 * cfg.vocab_size * cfg.d_model + cfg.d_model  # embedding, lm_head, norm


# ---------------------------------------------------------------------------- sharding, gathering, logits
def test_sharding_halves_the_states_and_nothing_else():
    cfg, projector = model_lib.PRESETS["small-moe"], 12 * 256**2
    one, two = (memory.plan_memory(cfg, w, 2, 64, projector) for w in (1, 2))
    n = memory.count_params(cfg) + projector
    assert (one.params, one.grads, one.optimizer) == (4 * n, 4 * n, 8 * n)
    assert (two.params, two.grads, two.optimizer) == (2 * n, 2 * n, 4 * n)
    for key in ("unsharded_peak", "activations", "logits"):
        assert getattr(one, key) == getattr(two, key)
    assert one.total - two.total == 8 * n


def test_gathered_params_and_logits_terms():
    cfg = model_lib.PRESETS["small-moe"]
    largest = max(memory.block_params(cfg, i) for i in range(cfg.n_layer))
    plan = memory.plan_memory(cfg, 4, 3, 100, projector_params=1000, compute_bytes=2)
    assert plan.unsharded_peak == 2 * (memory.root_params(cfg) + 1000 + 2 * largest)
    assert plan.logits == 3 * 100 * cfg.vocab_size * (4 + 4 + 2)  # fp32 logits, their gradient, the bf16 output
    fp32 = memory.plan_memory(cfg, 4, 3, 100, compute_bytes=4)
    assert fp32.logits == 3 * 100 * cfg.vocab_size * 12
    parts = ("params", "grads", "optimizer", "unsharded_peak", "activations", "logits")
    assert plan.total == sum(getattr(plan, key) for key in parts)


@pytest.mark.parametrize("bad", [dict(world=0), dict(micro_batch=0), dict(compute_bytes=3), dict(projector_params=-1)])
def test_bad_arguments_are_named(bad):
    args = dict(world=1, micro_batch=1, seq_len=8) | bad
    with pytest.raises(ValueError, match="plan_memory needs"):
        memory.plan_memory(model_lib.PRESETS["tiny-dense"], **args)


# ---------------------------------------------------------------------------- activations
def saved_bytes(fn, exclude) -> int:
    """Bytes of the distinct storages autograd saves while fn runs, other than those in `exclude`."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("name", ["tiny-moe", "small-moe"])
def test_block_formula_matches_what_autograd_saves(name):
    cfg = model_lib.PRESETS[name]
    torch.manual_seed(0)
    gpt = model_lib.GPT(cfg)
    B, T = 2, 64
    x = torch.randn(B, T, cfg.d_model, requires_grad=True)
    cos, sin = model_lib.rope_cos_sin(T, cfg.head_size, cfg.rope_theta)
    exclude = {t.untyped_storage().data_ptr() for t in [*gpt.parameters(), cos, sin]}
    for i in range(2):  # block 0 dense, block 1 MoE
        measured = saved_bytes(lambda: gpt.blocks[i](x, cos, sin), exclude)
        cpu_extra = B * T * cfg.d_model * 4  # SDPA's output, copied before the projection
        assert measured == pytest.approx(memory.block_activation_bytes(cfg, i, B * T, 4) + cpu_extra, rel=0.01)


@pytest.mark.parametrize("name", memory.PAPER_PRESETS)
def test_activation_checkpointing_lowers_activations(name):
    cfg = model_lib.PRESETS[name]
    plain, ac = (memory.plan_memory(cfg, 8, 1, 8192, activation_checkpointing=on) for on in (False, True))
    assert ac.activations < plain.activations / 4
    assert ac.activations == plain.checkpointed_activations == ac.checkpointed_activations
    blocks = [memory.block_activation_bytes(cfg, i, 8192, 2) for i in range(cfg.n_layer)]
    head = memory.head_activation_bytes(cfg, 8192, 2, 0)
    assert plain.activations == sum(blocks) + head
    assert ac.activations == cfg.n_layer * 8192 * cfg.d_model * 2 + max(blocks) + head  # inputs + one recompute
    assert ac.total - ac.activations == plain.total - plain.activations


def test_activations_scale_with_tokens():
    cfg = model_lib.PRESETS["dense-0.5b"]
    one, four = (memory.plan_memory(cfg, 2, b, 512) for b in (1, 4))
    assert (four.activations, four.logits) == (4 * one.activations, 4 * one.logits)


# ---------------------------------------------------------------------------- the device check and advice
def test_exceeds_keeps_a_margin():
    plan = memory.plan_memory(model_lib.PRESETS["small"], 1, 2, 64)
    assert plan.exceeds(plan.total)  # 100% of the device is over the 95% budget
    assert not plan.exceeds(int(plan.total / 0.9))
    assert not plan.exceeds(None)


def test_table_rows_in_gib():
    plan = memory.plan_memory(model_lib.PRESETS["dense-3b"], 8, 1, 8192)
    text = plan.table()
    assert len(text.splitlines()) == 1 + len(memory.MemoryPlan.ROWS)
    assert f"{plan.total / GIB:.2f}" in text and "headroom" not in text
    text = plan.table(80 * GIB)
    assert "device memory" in text and f"{(80 * GIB - plan.total) / GIB:.2f}" in text.splitlines()[-1]


def test_device_memory():
    assert memory.device_memory("cpu") is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_memory_cuda():
    assert memory.device_memory("cuda") == torch.cuda.get_device_properties(0).total_memory


def fits(cfg, world, micro_batch, checkpointing, device_bytes):
    plan = memory.plan_memory(cfg, world, micro_batch, 8192, 12 * cfg.d_model**2, 2, checkpointing)
    return not plan.exceeds(device_bytes)


def test_advice_for_a_model_too_big_for_its_gpus():
    cfg, device = model_lib.PRESETS["45bA5.5b"], 80 * GIB
    plan = memory.plan_memory(cfg, 8, 1, 8192, 12 * cfg.d_model**2)
    line = memory.advice(plan, device, 8, activation_checkpointing=False)
    assert "\n" not in line and "exceeds" in line
    assert "--activation_checkpointing=true saves" in line and "--seq_len" in line  # already at batch size 1
    world = int(re.search(r"world size >= (\d+) fits the sharded states with --activation_checkpointing", line)[1])
    assert fits(cfg, world, 1, True, device) and not fits(cfg, world - 1, 1, True, device)
    ac_plan = memory.plan_memory(cfg, 8, 1, 8192, 12 * cfg.d_model**2, activation_checkpointing=True)
    ac_line = memory.advice(ac_plan, device, 8, activation_checkpointing=True)
    assert "--activation_checkpointing" not in ac_line and f"world size >= {world} fits" in ac_line


def test_advice_for_a_batch_too_big():
    cfg, device = model_lib.PRESETS["dense-3b"], 80 * GIB
    plan = memory.plan_memory(cfg, 8, 4, 8192, 12 * cfg.d_model**2)
    line = memory.advice(plan, device, 8, activation_checkpointing=False)
    assert "more GPUs do not help" in line and "--activation_checkpointing=true" in line
    batch = int(re.search(r"--batch_size=(\d+) \(gradient accumulation", line)[1])
    assert 4 % batch == 0 and fits(cfg, 8, batch, False, device) and not fits(cfg, 8, 2 * batch, False, device)


def test_advice_when_it_fits_or_is_unknown():
    plan = memory.plan_memory(model_lib.PRESETS["small"], 1, 2, 64)
    assert "fits" in memory.advice(plan, 80 * GIB, 1, False)
    assert "unknown" in memory.advice(plan, None, 1, False)


# ---------------------------------------------------------------------------- the paper's table
def test_paper_table_lists_every_paper_preset(capsys):
    memory.main()
    text = capsys.readouterr().out
    assert text.strip() == memory.paper_table().strip()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| preset")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(memory.PAPER_PRESETS)
    assert set(memory.PAPER_PRESETS) <= set(model_lib.PRESETS)
    assert rows[memory.PAPER_PRESETS.index("45bA5.5b")].endswith("| no |")  # 45B on 8 x 80 GiB: 84 GiB of states
    assert rows[memory.PAPER_PRESETS.index("dense-0.5b")].endswith("| yes |")
    assert "fits 40 GiB" in memory.paper_table(world=16, device_gib=40)
