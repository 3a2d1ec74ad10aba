"""Tests of training on several processes: DDP and FSDP2 over 2 gloo processes (torchrun, CPU) against 1 process,
with and without gradient accumulation (NITP, and its peers MTP and NextLat under FSDP2), and DCP checkpoints saved
on 2 processes and resumed on 2 and on 1 (8 processes and two launchers: tests/test_parallel.py).
Each torchrun launch takes a few seconds: these are the slow tests of train.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import data_dir, tiny_config  # noqa: F401 (data_dir is a fixture)

import train
from support import checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def torchrun(cfg, nproc=2):
    args = [f"--{k}={v}" for k, v in vars(cfg).items() if k != "model_overrides" and v is not None]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def train_lines(out_dir):
    lines = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == "train"]


def weights(out_dir):
    return checkpoint.load_model(out_dir)[0].state_dict()


def test_two_processes_and_accumulation_train_on_the_same_global_batch(tmp_path, data_dir):  # noqa: F811
    """1 process x 1 micro-batch of 4, 1 process x 4 micro-batches of 1, 2 processes x 1 micro-batch of 2 (the default
    split) and 2 processes x 2 micro-batches of 1, under DDP and under FSDP2, read the same global batch (the
    sampler's property) and sum their gradients, so they follow the same trajectory. Dense: the same per-step losses and
    weights up to float32 reassociation (sums over other groupings, 1 thread per process under torchrun): 1e-5."""
    fields = dict(objective="nitp", max_steps=5, mask_doc_boundary=True, global_batch_tokens=64, eval_batches=0)
    runs = {"one": dict(batch_size=None), "one_accum": dict(batch_size=1)}
    for mode in ("ddp", "fsdp"):  # DDP accumulates locally and reduces once; FSDP2 reduce-scatters each micro-batch
        runs |= {f"two_{mode}": dict(batch_size=None, data_parallel=mode),
                 f"two_{mode}_accum": dict(batch_size=1, data_parallel=mode)}
    for name, extra in runs.items():
        cfg = tiny_config(tmp_path / name, data_dir, **fields, **extra)
        train.train(cfg) if name.startswith("one") else torchrun(cfg)
    reference = train_lines(tmp_path / "one")
    assert [r["step"] for r in reference] == [1, 2, 3, 4, 5]
    for name in list(runs)[1:]:
        for a, b in zip(reference, train_lines(tmp_path / name)):
            for key in ("loss_ntp", "loss_nitp", "grad_norm"):
                assert b[key] == pytest.approx(a[key], rel=1e-5), (name, a["step"], key)
        for key, value in weights(tmp_path / "one").items():
            # AdamW's steps are about lr * sign(g) (lr 1e-2 here): a reassociated gradient near 0 moves a weight
            # by a few 1e-6 after 5 steps (4.3e-6 measured), where a wrong gradient would move it by ~lr
            torch.testing.assert_close(weights(tmp_path / name)[key], value, rtol=1e-5, atol=5e-6, msg=(name, key))
    config = json.loads((tmp_path / "two_ddp" / "log.jsonl").read_text().splitlines()[0])
    assert config["world_size"] == 2 and config["grad_accum"] == 1 and config["train_config"]["batch_size"] == 2


def test_moe_two_processes_differ_only_by_the_per_micro_batch_balance_loss(tmp_path, data_dir):  # noqa: F811
    """The MoE balance loss is computed per micro-batch (f_i and P_i over its own tokens) and averaged: a split
    batch gives a different value than the whole one, as documented. Step 1's cross-entropy, computed before any
    update, is the same; the balance loss differs, but stays the same quantity (>= 1, near it at init)."""
    fields = dict(preset="tiny-moe", objective="nitp", max_steps=2, global_batch_tokens=64, eval_batches=0,
                  batch_size=None)  # 1 process: one micro-batch of 4; 2 processes: one of 2 each
    train.train(tiny_config(tmp_path / "one", data_dir, **fields))
    torchrun(tiny_config(tmp_path / "two", data_dir, **fields))
    one, two = train_lines(tmp_path / "one")[0], train_lines(tmp_path / "two")[0]
    assert two["loss_ntp"] == pytest.approx(one["loss_ntp"], rel=1e-5)
    assert two["loss_nitp"] == pytest.approx(one["loss_nitp"], rel=1e-5)
    assert two["loss_balance"] != one["loss_balance"] and 1.0 <= two["loss_balance"] < 1.5


def test_checkpoint_saved_on_two_processes_resumes_on_two_and_on_one(tmp_path, data_dir):  # noqa: F811
    """Save at step 3 on 2 processes; continue to step 6 on 2 processes (bitwise the uninterrupted 2-process run)
    and on 1 process (DCP reshards; the same trajectory up to float32 reassociation). decay_frac=0 keeps the
    learning rate of steps 1-6 independent of max_steps, so stopping at 3 and extending is the same schedule."""
    fields = dict(objective="nitp", global_batch_tokens=64, decay_frac=0.0, eval_batches=0, mask_doc_boundary=True)
    torchrun(tiny_config(tmp_path / "full", data_dir, max_steps=6, **fields))
    torchrun(tiny_config(tmp_path / "part", data_dir, max_steps=3, **fields))
    shutil.copytree(tmp_path / "part", tmp_path / "part1")
    torchrun(tiny_config(tmp_path / "part", data_dir, max_steps=6, resume=True, **fields))
    result = train.train(tiny_config(tmp_path / "part1", data_dir, max_steps=6, resume=True, **fields))
    assert result.step == 6 and checkpoint.read_meta(checkpoint.latest(tmp_path / "part"))["world_size"] == 2
    full = weights(tmp_path / "full")
    for key, value in weights(tmp_path / "part").items():
        assert torch.equal(value, full[key]), key  # same world size: bit for bit
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(value, full[key], rtol=1e-5, atol=1e-6, msg=key)
    full_losses = [r["loss_nitp"] for r in train_lines(tmp_path / "full")]
    assert [r["loss_nitp"] for r in train_lines(tmp_path / "part")] == full_losses
    assert np.allclose([r["loss_nitp"] for r in train_lines(tmp_path / "part1")], full_losses, rtol=1e-5)


@pytest.mark.parametrize("name", ["mtp", "nextlat"])
def test_peers_on_two_processes_match_one(tmp_path, data_dir, name):  # noqa: F811
    """MTP and NextLat read the unembedding matrix, a parameter of FSDP2's root unit, after the model's forward (the
    root stays gathered until the backward), and their heads are FSDP2 units of their own. 2 processes x 1
    micro-batch and 2 x 2 micro-batches must follow 1 process: the same per-step losses (each aux part too), the
    same validation aux loss, the same gradient norm before the first update and the same weights, up to float32
    reassociation (gloo's sums, 1 thread per process), which AdamW amplifies in the later steps' gradient norms
    (1e-4 relative by step 4, measured; the losses stay within 2e-7 and the weights within 2e-6)."""
    fields = dict(objective=name, max_steps=4, global_batch_tokens=64, eval_batches=2, mask_doc_boundary=True,
                  mtp_depth=2)
    train.train(tiny_config(tmp_path / "one", data_dir, **fields, batch_size=None))
    torchrun(tiny_config(tmp_path / "two", data_dir, **fields, batch_size=None, data_parallel="fsdp"))
    torchrun(tiny_config(tmp_path / "two_accum", data_dir, **fields, batch_size=1, data_parallel="fsdp"))
    reference = train_lines(tmp_path / "one")
    keys = ["loss_ntp", f"loss_{name}"] + (["loss_nextlat_h", "loss_nextlat_kl"] if name == "nextlat" else [])
    val_key = f"val_loss_{name}"
    val = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()][-1][val_key]
    for run in ("two", "two_accum"):
        lines = train_lines(tmp_path / run)
        assert lines[0]["grad_norm"] == pytest.approx(reference[0]["grad_norm"], rel=1e-5)  # before any update
        for a, b in zip(reference, lines):
            for key in keys:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (run, a["step"], key)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3), (run, a["step"])
        last = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()][-1]
        assert last[val_key] == pytest.approx(val, rel=1e-5, abs=1e-6)  # as the training losses
        for key, value in weights(tmp_path / "one").items():
            # AdamW's first steps are about lr * sign(g): a reassociated gradient near 0 moves a weight by ~1e-6
            torch.testing.assert_close(weights(tmp_path / run)[key], value, rtol=1e-5, atol=5e-6, msg=(run, key))
    assert reference[0][f"loss_{name}"] > 0
