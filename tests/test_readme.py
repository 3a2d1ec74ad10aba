"""Tests for README.md: its "method in code" snippet runs as printed (real functions, real shapes) and computes
the loss train.py's step trains, so the snippet cannot go stale."""

import re
from pathlib import Path

import torch

import train
from config import ObjectiveConfig, resolve_objective

README = Path(__file__).resolve().parents[1] / "README.md"


def method_snippet() -> str:
    """The first ```python block after the heading "## The method in code"."""
    text = README.read_text()
    section = text[text.index("## The method in code"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_method_snippet_runs_and_is_the_training_steps_loss():
    torch.manual_seed(0)
    scope = {}
    exec(compile(method_snippet(), "README.md", "exec"), scope)  # the snippet exactly as a reader copies it
    model, head, x, y, loss = scope["model"], scope["head"], scope["x"], scope["y"], scope["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())  # loss.backward() ran
    assert model.embed.weight.grad is not None
    # the same batch through train.py's own forward_terms and pair count: the same loss, to float32 rounding
    cfg = resolve_objective(ObjectiveConfig(objective="nitp"), model.config)
    (mask,), pairs = train.aux_pair_masks(cfg, [x], separator=None)
    with torch.no_grad():
        terms = train.forward_terms(model, head, cfg, x, y, mask)
        step_loss = terms.ce_sum / y.numel() + cfg.nitp_weight * terms.aux_sum / pairs.float()
    torch.testing.assert_close(step_loss, loss.detach())
