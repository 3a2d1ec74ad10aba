"""Tests of tools/profile_step.py: the device-busy union of kernel intervals, a CPU run that profiles the NITP step
and the MoE layer's dispatch beside the dense layer, and one-line errors for bad flags."""

import json
from types import SimpleNamespace

import pytest
import torch

from tools import profile_step

TINY = ["--preset=tiny-dense", "--moe_preset=tiny-moe", "--layer_tokens=256", "--warmup=1", "--rounds=2", "--top=40"]


def kernel(start, end, annotation=False, device=torch.autograd.DeviceType.CUDA):
    return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), device_type=device,
                           is_user_annotation=annotation)


def test_busy_time_is_the_union_of_kernel_intervals():
    """Overlapping and nested kernels count once, gaps not at all; user annotations (Optimizer.step spans its
    kernels) and CPU events not at all. Microseconds in, seconds out."""
    events = [kernel(0, 10), kernel(5, 20), kernel(6, 8), kernel(30, 40), kernel(0, 100, annotation=True),
              kernel(50, 90, device=torch.autograd.DeviceType.CPU)]
    assert profile_step.busy_seconds(events) == pytest.approx(30e-6)  # [0, 20] and [30, 40]
    assert profile_step.busy_seconds([]) == 0.0


def test_a_cpu_run_profiles_the_step_and_both_layers(tmp_path, capsys):
    out = tmp_path / "profile.txt"
    assert profile_step.main([*TINY, f"--out={out}"]) == 0
    report = out.read_text()
    assert report.strip() == capsys.readouterr().out.split("\nwrote ")[0].strip()
    step, moe, dense = (report.split(f"===== {name}")[1].split("=====")[0]
                        for name in ("NITP training step", "moe layer", "dense layer"))
    assert "aten::_fused_adamw_" in step and "aten::_log_softmax" in step  # the optimizer and the loss head
    assert "aten::argsort" in moe or "aten::sort" in moe  # the dispatch shows up by name
    assert "aten::index_add_" in moe and "aten::index_add_" not in dense
    assert profile_step.main([*TINY, "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for part in ("nitp_step", "moe_layer", "dense_layer"):
        assert 0 < figures[part]["host_ms"] <= figures[part]["wall_ms"] and figures[part]["busy_ms"] is None
    assert figures["nitp_step"]["mfu"] is None  # a GPU figure


@pytest.mark.parametrize("flags, message", [
    (["--rounds=0"], "rounds, projector_hidden and layer_tokens must be positive"),
    (["--top=0"], "top=0 must be at least 1"),
    (["--out=/no-such-folder/x/profile.txt"], "its folder /no-such-folder/x does not exist"),
    (["--preset=nope"], "unknown preset 'nope'"),
    (["--moe_preset=small"], "has no MoE block"),
    (["--stpes=3"], "unknown option '--stpes=3'"),
])
def test_bad_flags_are_one_line(capsys, flags, message):
    assert profile_step.main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("profile_step.py: error: ") and message in err and "\n" not in err


def test_out_naming_a_folder_is_refused_before_any_work(tmp_path, capsys):
    assert profile_step.main([*TINY, f"--out={tmp_path}"]) == 2
    assert "is a folder" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
