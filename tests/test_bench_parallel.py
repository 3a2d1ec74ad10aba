"""Tests for tools/bench_parallel.py: the step times it reads from log.jsonl, its flags, and one tiny run of each
wrapper over 2 gloo processes (the slow case)."""

import json
from types import SimpleNamespace

import pytest
from test_train import data_dir  # noqa: F401 (a fixture)

from tools import bench_parallel


def test_step_times_are_the_differences_of_the_training_clock_after_the_warmup(tmp_path):
    elapsed = [1.0, 1.5, 2.25, 3.25, 4.5]
    lines = [{"kind": "config"}] + [{"kind": "train", "step": i + 1, "elapsed_s": e} for i, e in enumerate(elapsed)]
    lines.insert(3, {"kind": "eval", "step": 2})  # not on the training clock
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert bench_parallel.step_times(tmp_path, warmup=0) == [1.0, 0.5, 0.75, 1.0, 1.25]
    assert bench_parallel.step_times(tmp_path, warmup=3) == [1.0, 1.25]  # steps 4 and 5


@pytest.mark.parametrize("argv, message", [(["--nproc=1"], "--nproc must be at least 2"),
                                           (["--steps=3", "--warmup=3"], "0 <= --warmup < --steps"),
                                           (["--rounds=x"], "argument --rounds: invalid int value: 'x'")])
def test_bad_flags_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        bench_parallel.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err


TORCHRUN_FAILURE = """[rank0]: train.py: error: unknown preset 'nope'; known presets: small, tiny-dense
E1207 22:00:00 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 2) local_rank: 0
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
"""


@pytest.mark.parametrize("stderr, code, message", [
    (TORCHRUN_FAILURE, 2, "unknown preset 'nope'; known presets: small, tiny-dense (in train.py --data_parallel=ddp)"),
    ("RuntimeError: gloo connection refused\n====\n", 1, "failed (exit 1): RuntimeError: gloo connection refused"),
])
def test_a_failed_launch_names_train_s_own_error_not_torchrun_s_banner(capsys, monkeypatch, stderr, code, message):
    """torchrun ends a failed job with its own banner: the line that says why is train.py's, one of its ranks'."""
    monkeypatch.setattr(bench_parallel.subprocess, "run",
                        lambda *a, **k: SimpleNamespace(returncode=1, stdout="", stderr=stderr))
    assert bench_parallel.main(["--preset=nope", "--steps=2", "--warmup=0"]) == code
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bench_parallel.py: error: ") and err.endswith(message), err


@pytest.mark.slow
def test_a_tiny_run_times_both_wrappers(capsys, data_dir):  # noqa: F811
    argv = ["--preset=tiny-dense", "--steps=3", "--warmup=0", "--rounds=1", "--json", "--",
            f"--data_dir={data_dir}", "--seq_len=16", "--global_batch_tokens=64"]
    assert bench_parallel.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps_timed"] == 3 and set(result["step_s"]) == {"ddp", "fsdp"}
    assert all(t > 0 for t in result["step_s"].values())
    assert result["ddp_over_fsdp"] == pytest.approx(result["step_s"]["ddp"] / result["step_s"]["fsdp"])
