"""Tests for fused.py: each Function against the plain formula it replaces (model.py's own, under fused.disabled()),
and a whole model with and without them. For rope and swiglu the claim is bit-for-bit equality (the same float32
operations in the same order), so those comparisons are torch.equal, not a tolerance: one reordered sum would break
them. rms_norm reorders its sums on purpose and is compared with a float32 tolerance."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model as model_lib
import train
from support import fused


def outputs_and_grads(fn, *inputs):
    """fn(*inputs) and the gradients of its inputs that require them, for one fixed random upstream grad."""
    inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*inputs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return [out] + [t.grad for t in inputs if t.requires_grad]


def assert_bitwise(plain, fast, *inputs):
    for a, b in zip(outputs_and_grads(plain, *inputs), outputs_and_grads(fast, *inputs), strict=True):
        assert a.shape == b.shape and torch.equal(a, b)


def plain(fn):
    """fn with fused.py switched off: model.py's plain formula."""
    def run(*args):
        with fused.disabled():
            return fn(*args)
    return run


def test_rope_equals_the_plain_rotation_bit_for_bit():
    torch.manual_seed(0)
    # a transposed view of a wider tensor, as q and k arrive from the joint qkv projection
    x = torch.randn(2, 10, 6, 16)[..., :4, :].transpose(1, 2).requires_grad_()  # (B, H, T, hd), not contiguous
    cos, sin = model_lib.rope_cos_sin(10, 16, 10000.0)
    assert_bitwise(plain(model_lib.apply_rope), fused.RoPE.apply, x, cos, sin)


@pytest.mark.parametrize("shape", [(3, 7, 32), (5, 48), (48,)])
def test_rms_norm_matches_f_rms_norm_to_float32_rounding(shape):
    """Another summation order of the same O(1) quantities: a few float32 ulps (rtol 1e-5), while a wrong
    term in the closed-form backward would be off by O(1)."""
    torch.manual_seed(0)
    x = (3 * torch.randn(shape)).requires_grad_()
    weight = torch.empty(shape[-1]).uniform_(0.5, 1.5).requires_grad_()
    plain = outputs_and_grads(lambda x, w: F.rms_norm(x, (shape[-1],), w, 1e-6), x, weight)
    fast = outputs_and_grads(lambda x, w: fused.RMSNorm.apply(x, w, 1e-6), x, weight)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_swiglu_equals_silu_times_up_bit_for_bit():
    torch.manual_seed(0)
    gate_up = torch.randn(3, 7, 2 * 24).requires_grad_()
    assert_bitwise(plain(model_lib.silu_gate), fused.SwiGLU.apply, gate_up)


def model_loss_and_grads(*plain_parts):
    """A dense model's loss and every parameter's gradient; plain_parts ("rope", "rms_norm", "silu_gate") run
    with fused.py switched off, the others through it."""
    config = dataclasses.replace(model_lib.get_preset("tiny-dense"), vocab_size=97)
    torch.manual_seed(0)
    model = model_lib.GPT(config)
    with torch.no_grad():  # gains away from 1, so the norms' weight gradients matter
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    with pytest.MonkeyPatch.context() as patch:
        where = {"rope": (model_lib, "apply_rope"), "rms_norm": (model_lib.RMSNorm, "forward"),
                 "silu_gate": (model_lib, "silu_gate")}
        for part in plain_parts:
            owner, name = where[part]
            patch.setattr(owner, name, plain(getattr(owner, name)))
        out = model(idx, layers=(1,), targets=targets)
        (out.ce_sum + out.layers[1].square().sum()).backward()
    return [out.ce_sum] + [p.grad for p in model.parameters()]


def test_a_model_with_fused_rope_and_swiglu_trains_to_the_same_bits():
    fast = model_loss_and_grads("rms_norm")
    plain = model_loss_and_grads("rms_norm", "rope", "silu_gate")
    assert all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))


def test_a_model_with_all_three_matches_the_plain_path_to_float32_rounding():
    """rms_norm's rounding (module docstring) carried through two blocks: a few ulps of each tensor's largest
    entry (1e-5 of it; float32's ulp is 1.2e-7 of a value), also where an entry is near 0."""
    fast = model_loss_and_grads()
    plain = model_loss_and_grads("rms_norm", "rope", "silu_gate")
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_enabled_only_for_eager_float32_without_autocast_unless_disabled():
    x = torch.zeros(2, 3)
    assert fused.enabled(x)
    assert not fused.enabled(x.double()) and not fused.enabled(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused.enabled(x)
    with fused.disabled():
        assert not fused.enabled(x)
    assert fused.enabled(x)


def test_train_flag_fused_kernels_false_runs_the_plain_formulas(tmp_path, monkeypatch):
    """train.py --fused_kernels=false: no fused Function is called during the run, and the switch is restored after
    it; the default run calls them (on CPU, float32)."""
    calls = []
    for name in ("RMSNorm", "RoPE", "SwiGLU"):
        real = getattr(fused, name).apply
        spy = lambda *a, real=real, name=name: calls.append(name) or real(*a)
        monkeypatch.setattr(getattr(fused, name), "apply", spy)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (np.arange(4000) % 60).astype(np.uint16).tofile(data_dir / "train.bin")
    (np.arange(1000) % 60).astype(np.uint16).tofile(data_dir / "val.bin")
    (data_dir / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}))
    base = dict(preset="tiny-dense", data_dir=str(data_dir), device="cpu", seq_len=16, batch_size=2,
                global_batch_tokens=32, max_steps=1, eval_batches=0, ckpt_interval=0)
    train.train(train.TrainConfig(out_dir=str(tmp_path / "plain"), fused_kernels=False, **base))
    assert calls == [] and fused.enabled(torch.zeros(1))  # none called; the process-wide switch is back on
    train.train(train.TrainConfig(out_dir=str(tmp_path / "fused"), **base))
    assert {"RMSNorm", "RoPE", "SwiGLU"} <= set(calls)
