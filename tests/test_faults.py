"""Fault injection: bad input and faults against train.py, eval.py and compare.py, on a tiny model.

Every case asserts the exit code, the one-line message (no traceback) and that nothing the user produced was
lost: the newest checkpoint still verifies and loads, log.jsonl still parses. The runs are copies of one finished
6-step run made once per module, so the whole file stays well under two minutes on 2 cores."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import data_dir  # noqa: F401 (a fixture)

import eval as eval_lib
import train
from support import checkpoint
from tools import compare

REPO = Path(__file__).resolve().parents[1]
BASE = ["--preset=tiny-dense", "--device=cpu", "--seq_len=16", "--batch_size=2", "--global_batch_tokens=64",
        "--lr=1e-2", "--warmup_steps=2", "--eval_batches=1", "--log_interval=1", "--objective=nitp"]


def args(out_dir, data, *extra, steps=6):
    return [*BASE, f"--data_dir={data}", f"--out_dir={out_dir}", f"--max_steps={steps}", "--ckpt_interval=2", *extra]


def run_main(capsys, argv):
    """(exit code, stderr) of train.main; the message must be one line with no traceback."""
    code = train.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def intact(out_dir, step=None):
    """The newest checkpoint verifies and loads into a model, and log.jsonl parses line by line."""
    latest = checkpoint.latest(out_dir)
    assert latest is not None
    meta = checkpoint.read_meta(latest)
    checkpoint.verify(latest, meta)
    model, _ = checkpoint.load_model(out_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    lines = (Path(out_dir) / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines[:-1]]  # a kill mid-append may tear the last line only
    assert records[0]["kind"] == "config"
    if step is not None:
        assert meta["step"] == step
    return meta


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):  # noqa: F811
    out = tmp_path_factory.mktemp("faults") / "run"
    assert train.main(args(out, data_dir)) == 0
    return out


@pytest.fixture
def run_copy(tmp_path, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


# ---------------------------------------------------------------------------- bad values: refused before training
@pytest.mark.parametrize("flag, message", [
    ("--nitp_weight=nan", "finite numbers"), ("--nitp_weight=inf", "finite numbers"),
    ("--nitp_weight=-1", "nitp_weight=-1.0 is negative"), ("--warmup_steps=-5", "must be >= 0"),
    ("--grad_clip=-1", "grad_clip must be >= 0"), ("--lr=0", "lr=0.0 must be > 0"), ("--lr=nan", "finite numbers"),
    ("--beta1=1.5", "beta1=1.5 and beta2=0.95 must be in [0, 1)"), ("--weight_decay=-0.1", "weight_decay"),
    ("--eval_batches=-1", "must be >= 0"), ("--on_nonfinite=maybe", "on_nonfinite='maybe'"),
    ("--projector_hidden=0", "projector_hidden must be positive"), ("--preset=bogus", "unknown preset 'bogus'"),
    ("--bogus=1", "unknown config key 'bogus'"), ("--device=cuda", "no usable CUDA GPU"),
    ("--target_layer=7", "target_layer=7 is outside"), ("--seq_len=1000", "exceeds the model's block_size"),
])
def test_bad_values_are_one_line_exit_2_and_nothing_is_written(tmp_path, data_dir, capsys, flag, message):  # noqa
    code, err = run_main(capsys, args(tmp_path / "out", data_dir, flag))
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("name, text, message", [
    ("run.yaml", "lr: 1\n", "give a .toml or .json file"), ("run.toml", "lr = = 1\n", "is not valid TOML"),
    ("run.json", "{\"lr\": 1,}", "is not valid JSON"), ("run.json", "[1, 2]", "table / object"),
    ("missing.toml", None, "no such file"), ("run.toml", 'lr = "fast"\n', "'lr' expects float"),
])
def test_bad_config_files_name_the_file(tmp_path, data_dir, capsys, name, text, message):  # noqa: F811
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    code, err = run_main(capsys, args(tmp_path / "out", data_dir, f"--config={path}"))
    assert code == 2 and message in err and (name in err or "'lr'" in err)


def test_out_dir_problems_are_found_before_training(tmp_path, data_dir, capsys):  # noqa: F811
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    code, err = run_main(capsys, args(a_file, data_dir))
    assert code == 2 and "is a file, not a folder" in err and a_file.read_text() == "mine"
    (tmp_path / "o1" / "checkpoints").parent.mkdir()
    (tmp_path / "o1" / "checkpoints").write_text("mine")
    code, err = run_main(capsys, args(tmp_path / "o1", data_dir))
    assert code == 2 and "keeps its checkpoint folders" in err
    (tmp_path / "o2" / "log.jsonl").mkdir(parents=True)
    code, err = run_main(capsys, args(tmp_path / "o2", data_dir))
    assert code == 2 and "writes its log" in err
    code, err = run_main(capsys, args(tmp_path / "o3", tmp_path / "no_data"))
    assert code == 2 and "does not exist" in err


# ---------------------------------------------------------------------------- a finished run is never overwritten
def test_a_fresh_run_into_a_used_out_dir_is_refused(run_copy, data_dir, capsys):  # noqa: F811
    before = intact(run_copy, step=6)
    code, err = run_main(capsys, args(run_copy, data_dir))
    assert code == 2 and "already holds a run" in err and "--resume=true" in err
    assert intact(run_copy, step=6)["sha256"] == before["sha256"]


@pytest.mark.parametrize("flag, field", [("--seed=1", "seed: checkpoint 1337, this run 1"), ("--lr=0.02", "lr:"),
                                         ("--loss_type=mse", "loss_type"),
                                         ("--global_batch_tokens=128", "global_batch"),
                                         ("--shift=0", "shift"), ("--n_layer=3", "model field n_layer"),
                                         ("--schedule=cosine", "schedule")])
def test_resume_refuses_a_changed_run(run_copy, data_dir, capsys, flag, field):  # noqa: F811
    code, err = run_main(capsys, args(run_copy, data_dir, flag, "--resume=true", steps=8))
    assert code == 2 and "cannot resume" in err and field in err
    intact(run_copy, step=6)


def test_resume_refuses_other_data(run_copy, tmp_path, data_dir, capsys):  # noqa: F811
    other = tmp_path / "other_data"
    shutil.copytree(data_dir, other)
    code, err = run_main(capsys, args(run_copy, other, "--resume=true", steps=8))
    assert code == 2 and "data_dir: checkpoint" in err
    intact(run_copy, step=6)


def test_extending_max_steps_is_allowed_logged_and_warned(run_copy, data_dir, capsys):  # noqa: F811
    code, _ = run_main(capsys, args(run_copy, data_dir, "--resume=true", steps=9))
    assert code == 0
    records = [json.loads(line) for line in (run_copy / "log.jsonl").read_text().splitlines()]
    resume = next(r for r in records if r["kind"] == "resume")
    assert resume["step"] == 6 and "max_steps 6 -> 9" in resume["notes"][0]
    assert any("past the old schedule's decay start" in note for note in resume["notes"])  # WSD decayed from step 5
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 10))
    intact(run_copy, step=9)
    code, err = run_main(capsys, args(run_copy, data_dir, "--resume=true", steps=4))
    assert code == 2 and "below the checkpoint's step 9" in err


# ---------------------------------------------------------------------------- corrupted checkpoints
def _shard(out_dir):
    return next(p for p in checkpoint.latest(out_dir).iterdir() if p.suffix == ".distcp")


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "delete", "meta"])
def test_a_corrupted_checkpoint_is_refused_never_trained_on_or_overwritten(run_copy, data_dir, capsys, damage):  # noqa
    shard = _shard(run_copy)
    if damage == "overwrite":  # bytes in the middle, length unchanged: only a checksum sees it
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2:len(raw) // 2 + 64] = os.urandom(64)
        shard.write_bytes(bytes(raw))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:1000])
    elif damage == "delete":
        shard.unlink()
    else:
        (shard.parent / "meta.json").write_text('{"step": 6, "model_conf')
    snapshot = {p.name: p.read_bytes() for p in shard.parent.iterdir()}
    code, err = run_main(capsys, args(run_copy, data_dir, "--resume=true", steps=8))
    assert code == 2 and "corrupted" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in shard.parent.iterdir()} == snapshot  # untouched
    assert checkpoint.latest(run_copy) == shard.parent  # still the newest: nothing newer was written over it
    assert eval_lib.main([str(run_copy), f"--out={run_copy.parent / 'report'}"]) == 2
    assert "corrupted" in capsys.readouterr().err


# ---------------------------------------------------------------------------- non-finite values while training
def test_a_nan_loss_stops_before_the_update_and_keeps_the_last_checkpoint(tmp_path, data_dir, capsys,  # noqa: F811
                                                                           monkeypatch):
    real = train.forward_terms
    calls = []

    def nan_at_step_5(*a, **k):  # 2 micro-batches a step: the 9th forward pass is step 5's first
        calls.append(1)
        terms = real(*a, **k)
        if len(calls) > 8:
            terms.ce_sum = terms.ce_sum * float("nan")
        return terms

    monkeypatch.setattr(train, "forward_terms", nan_at_step_5)
    code, err = run_main(capsys, args(tmp_path / "out", data_dir, "--eval_batches=0"))
    assert code == 1 and "step 5: non-finite loss or gradient" in err and "--on_nonfinite=skip" in err
    intact(tmp_path / "out", step=4)  # the step-4 checkpoint, finite, untouched


def test_skip_policy_drops_non_finite_updates_and_finishes(tmp_path, data_dir, capsys, monkeypatch):  # noqa: F811
    real, calls = train.forward_terms, []

    def nan_once(*a, **k):
        calls.append(1)
        terms = real(*a, **k)
        if len(calls) in (5, 6):  # both micro-batches of step 3
            terms.aux_sum = terms.aux_sum * float("inf")
        return terms

    monkeypatch.setattr(train, "forward_terms", nan_once)
    code, _ = run_main(capsys, args(tmp_path / "out", data_dir, "--on_nonfinite=skip", "--eval_batches=0"))
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "skipped"] == [3]
    intact(tmp_path / "out", step=6)


# ---------------------------------------------------------------------------- the disk
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, data_dir, capsys, monkeypatch):  # noqa
    import errno

    import torch.distributed.checkpoint as dcp
    real, saves = dcp.save, []

    def full_after_first(*a, **k):
        saves.append(1)
        if len(saves) > 1:
            raise RuntimeError("DCP failure") from OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(dcp, "save", full_after_first)
    code, err = run_main(capsys, args(tmp_path / "out", data_dir))
    assert code == 1 and "No space left on device" in err and err.count("\n") == 1
    intact(tmp_path / "out", step=2)


# ---------------------------------------------------------------------------- signals
def _spawn(argv):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_saves_exits_143_and_resume_finishes(tmp_path, data_dir):  # noqa: F811
    out = tmp_path / "out"
    proc = _spawn(args(out, data_dir, "--eval_batches=0", steps=400))
    while checkpoint.latest(out) is None:  # wait until it trains (and fail, not hang, if it died instead)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by signal 15" in err and "Traceback" not in err
    step = intact(out)["step"]
    assert 0 < step < 400
    assert compare.finished_steps(out) == (step, 400)  # compare.py sees an unfinished run
    assert train.main(args(out, data_dir, "--eval_batches=0", "--resume=true", steps=step + 2)) == 0


def test_sigkill_at_random_points_of_saves_and_resumes_leaves_a_loadable_checkpoint(tmp_path, data_dir):  # noqa: F811
    """A checkpoint every step, killed with SIGKILL at random moments (most land in or near a save), then killed
    again at random moments of the resume (loading, rewriting the log): the newest checkpoint always verifies and
    loads, the log always parses, and a final resume finishes the run."""
    out, rng = tmp_path / "out", random.Random(0)
    argv = args(out, data_dir, "--eval_batches=0", "--ckpt_interval=1", steps=300)
    argv[argv.index("--ckpt_interval=2")] = "--ckpt_interval=1"
    for attempt in range(4):
        proc = _spawn(argv + (["--resume=true"] if checkpoint.latest(out) else []))
        if attempt % 2 == 0:  # during training: after the first checkpoint, a random moment later
            while checkpoint.latest(out) is None or checkpoint.read_meta(checkpoint.latest(out))["step"] < 2:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))
        else:  # during the start of a resume: loading the checkpoint, rewriting the log
            time.sleep(rng.uniform(1.0, 4.0))
        proc.kill()
        proc.wait()
        intact(out)
    final = checkpoint.read_meta(checkpoint.latest(out))["step"]
    assert train.main([a for a in argv if not a.startswith("--max_steps")] + [f"--max_steps={final + 2}",
                                                                              "--resume=true"]) == 0
    intact(out, step=final + 2)


# ---------------------------------------------------------------------------- one run per folder
def test_two_runs_started_together_into_one_folder_exactly_one_trains(tmp_path, data_dir):  # noqa: F811
    """Two train.py processes at the same moment into the same fresh folder: one trains to the end, the other is
    refused in one line naming the folder and the process holding it, and log.jsonl holds the first run's lines
    only. The lock dies with its process: a later run into the folder is not refused by a stale lock."""
    out = tmp_path / "out"
    procs = [_spawn(args(out, data_dir, "--eval_batches=0", steps=8)) for _ in range(2)]
    results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, _, err in results]
    (_, _, refused_err), = [r for r in results if r[0] == 2]
    (_, winner_out, _), = [r for r in results if r[0] == 0]
    lines = refused_err.strip().splitlines()
    assert len(lines) == 1 and "is in use by another run (process " in lines[0] and str(out) in lines[0]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("config") == 1
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))  # one run's 8 steps, once each
    intact(out, step=8)
    proc = _spawn(args(out, data_dir, "--eval_batches=0", "--resume=true", steps=9))  # the winner has exited
    assert proc.wait(timeout=240) == 0, proc.communicate()[1][-2000:]


@pytest.mark.slow
def test_a_two_node_job_sharing_one_folder_is_one_run(tmp_path, data_dir):  # noqa: F811
    """Two torchrun launchers (--nnodes=2, one process each, a localhost rendezvous) into one out_dir: the lock
    belongs to global rank 0, so the job is not refused by itself; it trains as one 2-rank run with one log."""
    import socket
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                                   f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
                                   str(REPO / "train.py"), *args(out, data_dir, "--eval_batches=0", steps=3)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for rank in (0, 1)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in launchers]
    assert [code for code, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "config" and records[0]["world_size"] == 2
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]


# ---------------------------------------------------------------------------- found by trying the commands
def test_flags_may_be_written_key_space_value(tmp_path, data_dir, capsys):  # noqa: F811
    """`--max_steps 0` is --max_steps=0, as argparse would read it (not "unknown option '0'"): refused for its
    value, in one line, before anything is written."""
    argv = [a for a in args(tmp_path / "out", data_dir) if not a.startswith("--max_steps=")] + ["--max_steps", "0"]
    code, err = run_main(capsys, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "must be positive" in err and "unknown" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("folder", ["new", "empty", "user's files"])
def test_resume_into_a_folder_without_a_run_creates_nothing(tmp_path, data_dir, capsys, folder):  # noqa: F811
    """--resume=true where no run is: one line, exit 2, and no folder holding only .run.lock is left behind."""
    out = tmp_path / "out"
    if folder != "new":
        out.mkdir()
    if folder == "user's files":
        (out / "notes.txt").write_text("mine")
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir()) if out.exists() else None
    code, err = run_main(capsys, args(out, data_dir, "--resume=true"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--resume=true but {out} holds no run to continue" in err and "drop --resume" in err
    assert (sorted((p.name, p.read_bytes()) for p in out.iterdir()) if out.exists() else None) == before


def test_a_config_folder_and_a_data_file_are_named_as_such(tmp_path, data_dir, capsys):  # noqa: F811
    (tmp_path / "dir.toml").mkdir()
    code, err = run_main(capsys, args(tmp_path / "a", data_dir, f"--config={tmp_path / 'dir.toml'}"))
    assert code == 2 and "dir.toml is a folder; give a .toml or .json file" in err and err.count("\n") == 1
    code, err = run_main(capsys, args(tmp_path / "b", REPO / "README.md"))
    assert code == 2 and "README.md is a file, not a data folder" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_log_that_is_not_text_is_named_on_resume_and_kept(run_copy, data_dir, capsys):  # noqa: F811
    (run_copy / "log.jsonl").write_bytes(b"\xff\xfe\x00\x81")
    code, err = run_main(capsys, args(run_copy, data_dir, "--resume=true", steps=8))
    assert code == 2 and f"{run_copy / 'log.jsonl'} is not a text log (not UTF-8); move it away" in err
    assert (run_copy / "log.jsonl").read_bytes() == b"\xff\xfe\x00\x81"
    assert checkpoint.read_meta(checkpoint.latest(run_copy))["step"] == 6


def test_resume_into_a_folder_a_run_holds_says_it_is_in_use(tmp_path, data_dir, capsys):  # noqa: F811
    """A run that has not saved yet holds the folder: --resume=true is told the folder is in use (the cause),
    not that it holds no run (which would send the user to start a second run there)."""
    from support import runtime
    (tmp_path / "held").mkdir()
    lock = runtime.lock_folder(tmp_path / "held")
    try:
        code, err = run_main(capsys, args(tmp_path / "held", data_dir, "--resume=true"))
    finally:
        lock.close()
    assert code == 2 and "is in use by another run (process" in err and err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "held").iterdir()) == [runtime.LOCK_FILE]


def test_a_shorter_max_steps_on_resume_is_warned_as_a_schedule_change(run_copy, data_dir):  # noqa: F811
    """A checkpoint at step 6 of a run planned for 12 steps, resumed with --max_steps=8: allowed (ending early is
    a choice), with a warning that the learning rate now follows the 8-step schedule."""
    import config
    meta = checkpoint.read_meta(checkpoint.latest(run_copy))
    meta["train_config"]["max_steps"] = 12  # in memory only: the run as if it had been planned longer
    cfg, mcfg = config.resolve_config(config.parse_config(args(run_copy, data_dir, "--resume=true", steps=8)))
    notes = config.check_resumable(meta, cfg, mcfg, meta["data_dir"])
    assert notes[0] == "max_steps 12 -> 8"
    assert "a shorter run than planned: the learning rate follows the schedule of 8 steps from step 6 on (its " \
           "decay starts at step 6 instead of 10)" in notes[1]


def test_a_full_disk_reported_as_a_writer_error_is_one_line_and_frees_the_unfinished_save(
        tmp_path, data_dir, capsys, monkeypatch):  # noqa: F811
    """torch's file writer reports a full disk as RuntimeError("... unexpected pos ..."), with no OSError: the disk's
    free space names the cause, and the unfinished save's folder is removed so that the disk has room again."""
    import shutil as shutil_lib

    import torch.distributed.checkpoint as dcp
    real_save, real_usage, saves = dcp.save, shutil_lib.disk_usage, []

    def full_after_first(*a, **k):
        saves.append(1)
        if len(saves) > 1:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(*a, **k)

    def usage(path):
        total, used, free = real_usage(path)
        return type(real_usage(path))(total, used, 2**20 if len(saves) > 1 else free)

    monkeypatch.setattr(dcp, "save", full_after_first)
    monkeypatch.setattr(shutil_lib, "disk_usage", usage)
    code, err = run_main(capsys, args(tmp_path / "out", data_dir))
    assert code == 1 and "No space left on device" in err and err.count("\n") == 1
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["step_0000002"]
    monkeypatch.undo()
    intact(tmp_path / "out", step=2)


def test_resume_onto_a_full_disk_says_to_free_space_not_to_move(run_copy, data_dir, capsys, monkeypatch):  # noqa
    import errno

    import config

    def no_room(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(config, "open", no_room, raising=False)  # check_out_dir's probe file
    code, err = run_main(capsys, args(run_copy, data_dir, "--resume=true", steps=8))
    assert code == 2 and "no space left on its disk; free some space (a step_N.tmp folder" in err
    assert "pick another folder" not in err


@pytest.mark.parametrize("fault, code, message", [
    (KeyboardInterrupt, 130, "train.py: interrupted before training started or after it ended"),
    (MemoryError, 1, "train.py: error: out of memory (the memory plan above shows a rank's share)"),
])
def test_ctrl_c_or_no_memory_during_setup_is_one_line(tmp_path, data_dir, capsys, monkeypatch, fault, code,  # noqa
                                                      message):
    def fail(*a, **k):
        raise fault

    monkeypatch.setattr(train, "prepare_data", fail)
    got, err = run_main(capsys, args(tmp_path / "out", data_dir))
    assert got == code and err.startswith(message) and err.count("\n") == 1


def test_a_second_signal_stops_at_once_in_one_line():
    """The first SIGINT asks for a save after the step; a second one (the user insists) exits at once, 130, with one
    line saying what is kept, never a KeyboardInterrupt traceback from wherever the process was."""
    script = ("import os, signal, time\nfrom support import runtime\nwith runtime.graceful_stop():\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(5)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 130 and "saving a checkpoint after this step" in proc.stdout
    assert proc.stderr.strip().splitlines() == ["signal 2 again: stopped at once, without saving; --resume=true "
                                                "continues from the last complete checkpoint"]


def test_a_run_refused_at_startup_leaves_no_folder_behind(tmp_path, data_dir, capsys):  # noqa: F811
    """Bad input found after the folder's lock was taken (here: no data) removes the folder it created; an empty
    --out_dir is named as such."""
    code, err = run_main(capsys, args(tmp_path / "new", tmp_path / "no-data"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "new").exists()
    code, err = run_main(capsys, [*args("", data_dir)])
    assert code == 2 and "--out_dir is empty; give the run's folder" in err


def test_resume_through_a_symlink_to_the_same_data_folder_is_accepted(run_copy, data_dir, tmp_path, capsys):  # noqa
    (tmp_path / "link").symlink_to(data_dir)
    code, err = run_main(capsys, args(run_copy, tmp_path / "link", "--resume=true", steps=7))
    assert code == 0, err
    assert checkpoint.read_meta(checkpoint.latest(run_copy))["step"] == 7
