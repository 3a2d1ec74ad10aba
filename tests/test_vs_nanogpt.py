"""Tests for tools/vs_nanogpt.py: its input errors and its --fused path on a tiny model (the timings
themselves are figures for the README, never asserted)."""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import model as model_lib  # noqa: E402
from tools import vs_nanogpt  # noqa: E402


def test_a_missing_nanogpt_checkout_is_one_line_and_exit_2(tmp_path, capsys):
    assert vs_nanogpt.main([]) == 2
    assert vs_nanogpt.main([f"--nanogpt={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("vs_nanogpt.py: error:") and "nanoGPT" in line for line in err)


def test_fused_parts_time_every_function(capsys):
    config = dataclasses.replace(model_lib.get_preset("tiny-dense"), vocab_size=97, block_size=16)
    vs_nanogpt.fused_parts(config, rounds=2)  # quartiles need two rounds
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["blocks", "rope", "rms_norm", "swiglu"]
    assert all("fused/plain" in line for line in lines)


def test_ratio_line_is_the_median_of_per_round_ratios():
    line = vs_nanogpt.ratio_line("x", {"a": [2.0, 3.0, 9.0], "b": [1.0, 2.0, 3.0]})
    assert "a/b 2.000" in line and "3 rounds" in line  # ratios 2, 1.5, 3
