"""Tests for flops.py: the paper-mode count against the paper's own figures (within 1%: the paper rounds them to
three digits), the full count against a hand count on a tiny MoE (exact: integer arithmetic on both sides), and
every NITP projector kind counted from the head itself, and the GPU peak lookup (CUDA faked by its device name)."""

import dataclasses

import pytest
import torch

from config import ObjectiveConfig, resolve_objective
from model import PRESETS, get_preset
from nitp_loss import HEAD_KINDS, NITPHead
from support import flops
from support.flops import flops_per_token


def tiny(name, vocab_size=97):
    return dataclasses.replace(get_preset(name), vocab_size=vocab_size)


def test_flops_paper_mode_reproduces_spec_ratio():
    c = PRESETS["9bA1b"]
    f = flops_per_token(c, 8192, projector_params=12 * c.d_model ** 2, paper_mode=True)
    assert abs(f["ntp"] / 5.06e9 - 1) < 0.01 and abs(f["aux_extra"] / 1.18e8 - 1) < 0.01
    assert abs(f["aux_extra"] / f["ntp"] - 0.023) < 0.001
    assert flops_per_token(c, 8192)["aux_extra"] == 0


def test_flops_full_count_by_hand():
    c = tiny("tiny-moe")  # V 97, L 3 (1 dense), d 32, 4 q / 2 kv heads of 8, d_ff 64, 8 experts top-2 + 1 shared of 16
    T = 16
    attn_proj = 6 * 3 * (32 * 32 + 2 * 32 * 16 + 32 * 32)
    scores = 6 * 3 * 32 * T
    dense = 6 * 1 * 3 * 32 * 64
    moe = 6 * 2 * (3 * 32 * 16 * 3 + 32 * 8)  # 3 active experts + router
    unembed = 6 * 32 * 97
    f = flops_per_token(c, T, projector_params=3 * 32 * 128)
    assert f["ntp"] == attn_proj + scores + dense + moe + unembed
    assert f["aux_extra"] == 6 * 3 * 32 * 128 + 18 * 32


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_every_projector_kind_is_counted_from_the_head(kind):
    """What train.py logs MFU from: 6 FLOPs per weight of the head (forward + backward) and the loss's ~18 d, for
    every kind NITPHead builds, so a new kind is counted without editing flops.py (and fails here if it is not)."""
    c = tiny("tiny-dense")
    cfg = resolve_objective(ObjectiveConfig(objective="nitp", projector=kind), c)
    head_params = sum(p.numel() for p in NITPHead(c.d_model, kind=kind).parameters())
    cost = flops_per_token(c, 16, **flops.aux_flops_kwargs(cfg, c))
    assert cost["aux_extra"] == 6 * head_params + 18 * c.d_model
    assert (cost["aux_extra"] > 18 * c.d_model) == (kind != "none")
    assert flops.aux_flops_kwargs(resolve_objective(ObjectiveConfig(objective="ntp"), c), c) == {}


def test_peak_bf16_flops(monkeypatch):
    assert flops.peak_bf16_flops("cpu") is None
    for name, peak in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
                       ("NVIDIA A100-SXM4-40GB", 312e12), ("Some Future GPU", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert flops.peak_bf16_flops("cuda") == peak  # the longest matching key wins (PCIe before H100)
