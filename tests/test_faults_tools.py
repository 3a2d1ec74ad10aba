"""The fault suite for the commands besides train.py (tests/test_faults.py) and data.py (tests/test_data_faults.py):
eval.py and tools/compare.py refuse bad numbers before any work, an edited checkpoint meta.json is corrupted for
every loader, and so is a damaged newer checkpoint, --resume and eval.py refuse a data folder prepared again with
other tokens, a run still saving is read from its newest checkpoint, and a stopped or killed compare.py takes its
training process with it. Each case asserts the exit code, a one-line message and that nothing the user had
changed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_checkpoint import next_save
from test_faults import args, finished, run_copy, run_main  # noqa: F401 (fixtures)
from test_train import data_dir  # noqa: F401 (a fixture)

import eval as eval_lib
import sample
import train
from support import checkpoint
from tools import bench, compare, export

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder) -> dict:
    """Every file's bytes under folder, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != ".run.lock"}  # the lock file names the process that last held it


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------- eval.py
@pytest.mark.parametrize("flag, message", [
    ("--max_tokens=-5", "--max_tokens=-5 must be positive"), ("--max_tokens=0", "--max_tokens=0 must be positive"),
    ("--max_tokens=1", "--max_tokens=1: at least 2 held-out tokens are needed"),
    ("--num_pairs=0", "--num_pairs=0 must be positive"), ("--batch_tokens=0", "--batch_tokens=0 must be positive"),
    ("--seq_len=1", "seq_len=1"), ("--probe_test_fraction=1.5", "probe_test_fraction"), ("--probe_l2=-1", "probe_l2"),
    ("--num_mc=0", "--num_mc=0 must be positive")])
def test_eval_refuses_bad_numbers_before_any_work(run_copy, tmp_path, capsys, flag, message):
    before = snapshot(run_copy)
    assert eval_lib.main([str(run_copy), f"--out={tmp_path / 'report'}", flag]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "report").exists() and snapshot(run_copy) == before


# ---------------------------------------------------------------------------- compare.py
@pytest.mark.parametrize("flag, message", [
    ("--max_steps=-5", "must be positive"), ("--max_steps=0", "must be positive"),
    ("--global_batch_tokens=0", "must be positive"), ("--eval_max_tokens=-1", "must be positive"),
    ("--eval_max_tokens=1", "--eval_max_tokens=1: at least 2"),
    ("--seeds=0", "--seeds must be >= 1"), ("--variants=ntp,jtp", "unknown variant"),
    ("--lr=-1", "lr=-1.0 must be > 0"), ("--seed=3", "set by compare.py"), ("--nitp_weight=nan", "finite")])
def test_compare_refuses_bad_flags_before_training(tmp_path, capsys, flag, message):
    assert compare.main([f"--out_dir={tmp_path / 'cmp'}", "--preset=tiny-dense", "--seq_len=32", flag]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "cmp").exists()  # nothing trained, nothing written


def _processes_with(text: str) -> list[int]:
    """PIDs whose command line contains `text` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _start_compare(out_dir, steps):
    flags = ["--variants=ntp", "--preset=tiny-dense", f"--max_steps={steps}", "--ckpt_interval=5", "--seq_len=32",
             "--batch_size=2", "--global_batch_tokens=64", "--eval_batches=1", "--eval_interval=0",
             "--eval_max_tokens=256", f"--out_dir={out_dir}"]
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "compare.py"), *flags], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = Path(out_dir) / "seed1337" / "ntp"
    deadline = time.monotonic() + 240
    while checkpoint.latest(run_dir) is None:  # its train.py trains
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    return proc, flags, run_dir


def _gone(text, seconds=60):
    deadline = time.monotonic() + seconds
    while _processes_with(text) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _processes_with(text)


@pytest.mark.slow
def test_sigint_to_compare_stops_its_run_with_a_checkpoint_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "cmp"
    proc, flags, run_dir = _start_compare(out, steps=3000)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "stopped by signal 2" in err and "Traceback" not in err  # as train.py exits
    assert _gone(str(run_dir))  # its train.py stopped too (it saved first)
    step = checkpoint.read_meta(checkpoint.latest(run_dir))["step"]
    assert 0 < step < 3000
    flags = [f if not f.startswith("--max_steps=") else f"--max_steps={step + 5}" for f in flags]
    done = subprocess.run([sys.executable, str(REPO / "tools" / "compare.py"), *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--resume=true" in done.stdout and checkpoint.read_meta(checkpoint.latest(run_dir))["step"] == step + 5


@pytest.mark.slow
def test_a_killed_compare_takes_its_training_process_with_it(tmp_path):
    proc, _, run_dir = _start_compare(tmp_path / "cmp", steps=3000)
    assert _processes_with(str(run_dir))
    proc.kill()  # SIGKILL: compare.py cannot pass anything on; the kernel tells its child (SIGTERM)
    proc.wait(timeout=60)
    assert _gone(str(run_dir))
    latest = checkpoint.latest(run_dir)
    checkpoint.verify(latest, checkpoint.read_meta(latest))  # the child saved on its way out, intact


# ---------------------------------------------------------------------------- edited checkpoint metadata
@pytest.mark.parametrize("field, value", [("step", 3), ("model_config.d_model", 64), ("train_config.lr", 0.5)])
def test_an_edited_meta_json_is_corrupted_for_every_loader(run_copy, data_dir, tmp_path, capsys, field, value):
    """A field a loader trusts, edited in meta.json (its file checksums untouched): train.py --resume, eval.py and
    export.py all say "corrupted" in one line, exit 2, and change nothing (the log is not cut back to step 3)."""
    ckpt = checkpoint.latest(run_copy)
    meta = json.loads((ckpt / checkpoint.META).read_text())
    keys = field.split(".")
    (meta[keys[0]] if len(keys) == 2 else meta)[keys[-1]] = value
    (ckpt / checkpoint.META).write_text(json.dumps(meta))
    before = snapshot(run_copy)
    code, err = run_main(capsys, args(run_copy, data_dir, "--resume=true", steps=8))
    assert code == 2 and "corrupted" in one_line(err)
    assert eval_lib.main([str(run_copy), f"--out={tmp_path / 'report'}"]) == 2
    assert "corrupted" in one_line(capsys.readouterr().err)
    assert export.main([str(run_copy), f"--out={tmp_path / 'hf'}"]) == 2
    assert "corrupted" in one_line(capsys.readouterr().err)
    assert snapshot(run_copy) == before and not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------- data prepared again
def test_resume_and_eval_refuse_a_data_folder_prepared_again_with_other_tokens(tmp_path, capsys):
    """Same path, same tokenizer, same shard index: only what the shards hold differs, and --resume and eval.py (its
    val split may now hold what the run trained on) refuse; sample.py, which reads only the vocabulary, samples."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 20_000), ("val", 4_000)):
        rng.integers(10, 70, n).astype(np.uint16).tofile(data / f"{split}.bin")
    (data / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256,
                                                "train_tokens": 20_000, "val_tokens": 4_000}))
    out = tmp_path / "run"
    assert train.main(args(out, data, "--eval_batches=0", steps=4)) == 0
    np.random.default_rng(1).integers(10, 70, 20_000).astype(np.uint16).tofile(data / "train.bin")  # other text
    before = snapshot(out)
    code, err = run_main(capsys, args(out, data, "--eval_batches=0", "--resume=true", steps=6))
    assert code == 2 and "prepared again" in one_line(err) and snapshot(out) == before
    assert eval_lib.main([str(out), f"--out={tmp_path / 'report'}", "--probe=false", "--mc=false"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{data} was prepared again after training: its shards hold other tokens" in line
    assert "--data_dir=" in line and not (tmp_path / "report").exists() and snapshot(out) == before
    assert sample.main([str(out), "--device=cpu", "--num_samples=1", "--max_new_tokens=2"]) == 0


# ---------------------------------------------------------------------------- bench.py
@pytest.mark.parametrize("flag, message", [("--rounds=0", "must be positive"), ("--batch_size=-1", "must be positive"),
                                           ("--bogus=1", "bogus"), ("--preset=nope", "unknown preset")])
def test_bench_refuses_bad_flags_in_one_line(capsys, flag, message):
    assert bench.main([flag, "--preset=tiny-dense"] if "preset" not in flag else [flag]) == 2
    assert message in one_line(capsys.readouterr().err)


def test_the_lock_of_a_finished_run_does_not_block_the_next(run_copy, data_dir, capsys):
    """The lock dies with the process holding it: a run into a folder whose earlier run has ended is not refused,
    and the folder's lock file names nobody alive."""
    assert (run_copy / ".run.lock").exists()
    code, _ = run_main(capsys, args(run_copy, data_dir, "--resume=true", "--eval_batches=0", steps=7))
    assert code == 0
    holder = (run_copy / ".run.lock").read_text().split()[1]
    assert int(holder) == os.getpid()  # this process held it, and released it when train.main returned
    code, _ = run_main(capsys, args(run_copy, data_dir, "--resume=true", "--eval_batches=0", steps=8))
    assert code == 0


# ---------------------------------------------------------------------------- found by trying the commands
@pytest.mark.parametrize("flags, message", [(["--variants="], "--variants is empty"),
                                            (["--out_dir=FILE"], "is a file, not a folder"),
                                            (["--out_dir="], "--out_dir is empty; give the folder")])
def test_compare_refuses_an_empty_variant_list_and_a_file_as_out_dir(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)  # an empty --out_dir is the current folder
    monkeypatch.setattr(compare, "run_training", lambda *a: pytest.fail("trained instead of refusing"))
    (tmp_path / "FILE").write_text("mine")
    flags = [f.replace("FILE", str(tmp_path / "FILE")) for f in flags]
    assert compare.main(["--preset=tiny-dense", "--seq_len=32", f"--out_dir={tmp_path / 'cmp'}", *flags]) == 2
    assert message in one_line(capsys.readouterr().err) and (tmp_path / "FILE").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["FILE"]


def test_a_damaged_step_folder_is_never_deleted_by_a_fresh_run(run_copy, data_dir, capsys):
    """A step_N folder without meta.json (damage: saves use .tmp names) is refused, not removed as litter."""
    ckpt = checkpoint.latest(run_copy)
    (ckpt / checkpoint.META).unlink()
    before = snapshot(run_copy)
    for extra in ((), ("--resume=true",)):
        code, err = run_main(capsys, args(run_copy, data_dir, *extra, steps=8))
        assert code == 2 and snapshot(run_copy) == before
    assert f"{ckpt} has no meta.json" in one_line(err)


def test_a_fresh_run_keeps_an_earlier_log_aside(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text("my earlier log\n")
    code, _ = run_main(capsys, args(out, data_dir, "--eval_batches=0", steps=2))
    assert code == 0 and (out / "log.jsonl.1").read_text() == "my earlier log\n"


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_data_py_refuses_a_worker_count_below_one(tmp_path, workers):
    (tmp_path / "a.txt").write_text("Some text to prepare.\n" * 50)
    done = subprocess.run([sys.executable, "data.py", f"--input={tmp_path / 'a.txt'}", f"--out_dir={tmp_path / 'out'}",
                           f"--workers={workers}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "must be at least 1" in one_line(done.stderr) and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- eval.py never replaces the user's files
@pytest.mark.parametrize("name", ["report.md", "spectra_final.png", "run/metrics.json"])
def test_eval_refuses_an_out_folder_holding_files_it_did_not_write(run_copy, tmp_path, capsys, name):
    """A report.md, a figure or a metrics.json of the user's where eval.py would write its own: refused before any
    work, one line, exit 2, the folder byte-identical (eval.py replaces only a report of its own: test_eval.py)."""
    out = tmp_path / "mine"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text("the user's own file")
    before = snapshot(out)
    assert eval_lib.main([str(run_copy), f"--out={out}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--out={out} holds {name}, which eval.py did not write" in line and "new or empty folder" in line
    assert snapshot(out) == before


@pytest.mark.parametrize("below", ["", "sub"], ids=["the file", "a folder inside the file"])
def test_eval_refuses_a_file_as_out_in_one_line(run_copy, tmp_path, capsys, below):
    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / below if below else tmp_path / "afile"
    assert eval_lib.main([str(run_copy), f"--out={out}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"eval.py: error: --out={out}: {tmp_path / 'afile'} is a file, not a folder; pass a folder")
    assert (tmp_path / "afile").read_text() == "mine"


# ---------------------------------------------------------------------------- argparse: one line, no usage block
@pytest.mark.parametrize("command, argv, message", [
    ("eval", ["RUN", "--out=x", "--bogus=1"], "unrecognized arguments: --bogus=1"),
    ("eval", ["RUN"], "the following arguments are required: --out"),
    ("eval", ["RUN", "--out=x", "--probe=maybe"], "argument --probe: config key 'probe' expects a bool"),
    ("export", ["RUN", "--out=x", "--dtype=int3"], "argument --dtype: invalid choice: 'int3'"),
    ("vs_nanogpt", ["--rounds=many"], "argument --rounds: invalid int value: 'many'")])
def test_argparse_commands_refuse_a_bad_flag_in_one_line(capsys, command, argv, message):
    """support/cli.py's parser: `PROG: error: MESSAGE; see PROG --help`, exit 2, without argparse's usage block."""
    from tools import vs_nanogpt
    main = {"eval": eval_lib.main, "export": export.main, "vs_nanogpt": vs_nanogpt.main}[command]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    line = one_line(capsys.readouterr().err)
    assert exit_.value.code == 2 and message in line and line.endswith("--help") and "usage:" not in line


def test_data_py_refuses_a_bad_flag_in_one_line_naming_itself(tmp_path):
    done = subprocess.run([sys.executable, "data.py", "--workers=two", f"--out_dir={tmp_path / 'out'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert one_line(done.stderr) == ("data.py: error: argument --workers: invalid int value: 'two'; see data.py "
                                     "--help")


# ---------------------------------------------------------------------------- found by a user's probe of the loaders
def test_a_damaged_newer_checkpoint_is_refused_by_every_loader(run_copy, tmp_path, capsys):
    """A step_N folder without meta.json, newer than the newest checkpoint (damage: saves use .tmp names), is refused
    by eval.py, export.py and sample.py as by train.py --resume, naming it: none reads the older weights instead."""
    ckpt = checkpoint.latest(run_copy)
    damaged = checkpoint.step_dir(run_copy, 99)
    damaged.mkdir()
    for name in (".metadata", "__0_0.distcp"):
        shutil.copy(ckpt / name, damaged / name)
    before = snapshot(run_copy)
    refusal = f"{damaged} has no meta.json: a damaged checkpoint"
    assert eval_lib.main([str(run_copy), f"--out={tmp_path / 'report'}", "--probe=false", "--mc=false"]) == 2
    assert refusal in one_line(capsys.readouterr().err)
    assert export.main([str(run_copy), f"--out={tmp_path / 'hf'}"]) == 2
    assert refusal in one_line(capsys.readouterr().err)
    assert sample.main([str(run_copy), "--device=cpu", "--num_samples=1", "--max_new_tokens=2"]) == 2
    out, err = capsys.readouterr()
    assert refusal in one_line(err) and out == ""
    assert snapshot(run_copy) == before and not (tmp_path / "report").exists() and not (tmp_path / "hf").exists()


def test_eval_on_a_run_that_saves_faster_than_it_reads_says_so_in_one_line(run_copy, tmp_path, capsys, monkeypatch):
    """Each checkpoint eval.py picks is replaced by the run's next save while it is read (checkpoint.load_newest
    reads the newest again: tests/test_checkpoint.py); after RELOADS of them, one line saying to retry."""
    real, saves = checkpoint.verify, []
    monkeypatch.setattr(checkpoint, "verify", lambda ckpt, meta: (saves.append(next_save(ckpt)), real(ckpt, meta)))
    assert eval_lib.main([str(run_copy), f"--out={tmp_path / 'report'}", "--probe=false", "--mc=false"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"the run in {run_copy} is writing checkpoints faster than they can be read" in line and "retry" in line
    assert len(saves) == checkpoint.RELOADS and not (tmp_path / "report").exists()


@pytest.mark.parametrize("same", [True, False], ids=["one run twice", "two runs of one name"])
def test_eval_refuses_two_runs_it_would_report_under_one_name(run_copy, tmp_path, capsys, same):
    """One's NAME/metrics.json would replace the other's, their report rows indistinguishable: refused before work."""
    if same:
        runs, name = [run_copy, run_copy], "run"
    else:
        runs, name = [tmp_path / "g1" / "s" / "x", tmp_path / "g2" / "s" / "x"], "s-x"
        for run in runs:
            shutil.copytree(run_copy, run)
    out = tmp_path / "report"
    assert eval_lib.main([*map(str, runs), f"--out={out}", "--max_tokens=64", "--probe=false", "--mc=false"]) == 2
    assert f"{runs[0]} and {runs[1]} would both be reported as '{name}'" in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_export_refuses_an_out_below_a_file_in_one_line(run_copy, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    assert export.main([str(run_copy), f"--out={tmp_path / 'afile' / 'sub'}"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{tmp_path / 'afile'} is a file, not a folder; pass a folder for the export" in line
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("name", ["report.md", "summary.md"])
def test_compare_refuses_a_report_folder_holding_the_users_files_before_training(tmp_path, capsys, monkeypatch, name):
    """eval.py's report.md, or compare.py's summary, would replace a file of the user's in OUT_DIR/report: refused
    before the first run trains, not after all of them did."""
    monkeypatch.setattr(compare, "run_training", lambda *a: pytest.fail("trained before refusing"))
    out = tmp_path / "cmp"
    (out / "report").mkdir(parents=True)
    (out / "report" / name).write_text("# my notes\n")
    assert compare.main([f"--out_dir={out}", "--preset=tiny-dense", "--seq_len=32"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--out_dir={out}: {out / 'report'} holds {name}, which eval.py did not write" in line
    assert os.listdir(out) == ["report"] and (out / "report" / name).read_text() == "# my notes\n"


@pytest.mark.parametrize("command", ["eval", "export"])
def test_an_empty_out_is_refused_not_the_current_folder(tmp_path, finished, capsys, monkeypatch, command):  # noqa: F811
    """--out= would be the current folder: the report or the export would land among whatever is there."""
    monkeypatch.chdir(tmp_path)
    main = eval_lib.main if command == "eval" else export.main
    assert main([str(finished), "--out="]) == 2
    assert one_line(capsys.readouterr().err).endswith("--out is empty; give " + (
        "the report's folder, e.g. --out=reports/x" if command == "eval" else "the folder for the export, e.g. "
                                                                           "--out=hf/RUN"))
    assert list(tmp_path.iterdir()) == []
