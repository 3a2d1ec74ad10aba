"""Tests for tasks.py: the built-in genre probe and next-line tasks, user task files, and build_tasks.

Running a model on these tasks (the probe classifier, the multiple-choice scorer) is tested in test_eval.py,
which takes its fake tokenizer and fake plays from here: a character-level tokenizer and four genres of
made-up plays, so these tests need neither the GPT-2 BPE files nor the corpus, except the slow one, which
checks the built-in tasks on the real plays.
"""

import dataclasses
import json

import pytest

import data
import eval as ev
from support import shakespeare, tasks
from support import tokenizer as tokenizer_lib


# ---------------------------------------------------------------------------- helpers
class CharTokenizer:
    """One token per character (ids < 128): lets tests control lengths exactly and keeps the vocabulary tiny."""

    eot_token = 0

    def encode_ordinary(self, text):
        return [ord(c) % 128 for c in text]


FAKE_PLAYS = [{"title": f"{genre} {i}", "genre": genre, "split": "val" if i == 0 else "train",
               "text": "\n".join(f"{genre} play {i}, line {j}: " + "abcdefgh"[(i + j) % 8] * (10 + j % 7)
                                 for j in range(60))}
              for genre in ("comedies", "tragedies", "histories", "romances") for i in range(3)]


# ---------------------------------------------------------------------------- probe tasks
def test_genre_task_holds_out_whole_plays_and_drops_ambiguous_genres():
    task = tasks.build_genre_task(FAKE_PLAYS, CharTokenizer(), window=32, per_play=5)
    assert {ex["label"] for ex in task} == {"comedy", "tragedy", "history"}  # romances dropped
    assert all(len(ex["tokens"]) == 32 for ex in task)
    # one val play per kept genre (the val romance is dropped), 5 passages each, all in the test split
    assert sum(ex["split"] == "test" for ex in task) == 3 * 5
    assert tasks.GENRE_MAP["roman"] == "tragedy"
    assert "problem" not in tasks.GENRE_MAP and "romance" not in tasks.GENRE_MAP


# ---------------------------------------------------------------------------- multiple-choice tasks
def test_next_line_task_uses_held_out_plays_with_distinct_choices():
    questions = tasks.build_next_line_task(FAKE_PLAYS, num_questions=20, context_lines=3, seed=0)
    assert len(questions) == 20 and questions == tasks.build_next_line_task(FAKE_PLAYS, 20, 3, seed=0)
    for q in questions:
        truth = q["choices"][q["answer"]]
        assert len(q["choices"]) == 4 == len(set(q["choices"]))
        assert " 0, line" in truth  # only val plays (index 0) are used
        assert truth.split(",")[0] == q["context"].split(",")[0]  # distractors come from the same play
        assert all(c.split(",")[0] == truth.split(",")[0] for c in q["choices"])


# ---------------------------------------------------------------------------- task files
def test_task_files_with_missing_fields_name_file_and_line(tmp_path):
    probe = tmp_path / "probe.jsonl"
    probe.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"probe\.jsonl, line 2: missing field 'label'"):
        tasks.load_probe_file(probe, CharTokenizer())
    mc = tmp_path / "mc.jsonl"
    mc.write_text('{"context": "c", "choices": ["a", "b"], "answer": 0}\n\n{"context": "c", "choices": ["a", "b"]}\n')
    with pytest.raises(ValueError, match=r"mc\.jsonl, line 3: missing field 'answer'"):
        tasks.load_mc_file(mc)
    mc.write_text('{"context": "c", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(ValueError, match="line 1: 'answer' 2"):
        tasks.load_mc_file(mc)


def test_probe_file_fraction_split_and_explicit_split(tmp_path):
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(8)))
    task = tasks.load_probe_file(path, CharTokenizer(), test_fraction=0.25)
    assert sum(ex["split"] == "test" for ex in task) == 2 and {ex["label"] for ex in task} == {"0", "1"}
    path.write_text('{"text": "a", "label": "x", "split": "train"}\n{"text": "b", "label": "y", "split": "test"}\n')
    assert [ex["split"] for ex in tasks.load_probe_file(path, CharTokenizer())] == ["train", "test"]


# ---------------------------------------------------------------------------- the tasks of an evaluation
def test_build_tasks_builds_the_builtin_tasks_reads_user_files_and_skips_other_tokenizers(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenizer_lib, "get_tokenizer", CharTokenizer)
    monkeypatch.setattr(shakespeare, "shakespeare_plays", lambda: FAKE_PLAYS)
    cfg = ev.EvalConfig(probe_window=16, probe_per_play=4, num_mc=8, mc_context_lines=3, seed=1)
    probe_task, mc_task = tasks.build_tasks(cfg)
    assert probe_task == tasks.build_genre_task(FAKE_PLAYS, CharTokenizer(), window=16, per_play=4)
    assert mc_task == tasks.build_next_line_task(FAKE_PLAYS, num_questions=8, context_lines=3, seed=1)
    assert tasks.build_tasks(dataclasses.replace(cfg, probe=False)) == (None, mc_task)
    assert tasks.build_tasks(dataclasses.replace(cfg, mc=False)) == (probe_task, None)
    # a model with another tokenizer cannot be fed these texts: both tasks are skipped, whatever cfg asks
    assert tasks.build_tasks(cfg, "qwen2") == (None, None)
    # the user's files replace the built-in tasks, and the plays are then not read at all
    unread = lambda: pytest.fail("plays read although both tasks are files")
    monkeypatch.setattr(shakespeare, "shakespeare_plays", unread)
    probe_file, mc_file = tmp_path / "probe.jsonl", tmp_path / "mc.jsonl"
    probe_file.write_text('{"text": "abc", "label": "x", "split": "train"}\n'
                          '{"text": "de", "label": "y", "split": "val"}\n')
    mc_file.write_text('{"context": "c", "choices": ["a", "b"], "answer": 1}\n')
    probe_task, mc_task = tasks.build_tasks(dataclasses.replace(cfg, probe_file=str(probe_file), mc_file=str(mc_file)))
    assert [(ex["tokens"], ex["label"], ex["split"]) for ex in probe_task] == [([97, 98, 99], "x", "train"),
                                                                              ([100, 101], "y", "test")]
    assert [(q["choices"], q["answer"]) for q in mc_task] == [(["a", "b"], 1)]


# ---------------------------------------------------------------------------- the real plays
@pytest.mark.slow
def test_builtin_shakespeare_tasks_hold_out_whole_plays():
    plays = shakespeare.shakespeare_plays()
    task = tasks.build_genre_task(plays, data.get_tokenizer(), window=128, per_play=4)
    test_labels = {ex["label"] for ex in task if ex["split"] == "test"}
    assert test_labels == {"comedy", "tragedy", "history"}  # shakespeare.VAL_PLAYS holds out one of each
    assert {ex["label"] for ex in task if ex["split"] == "train"} == test_labels
    val_lines = {ln.strip() for p in plays if p["split"] == "val" for ln in p["text"].splitlines()}
    questions = tasks.build_next_line_task(plays, num_questions=50, seed=0)
    assert len(questions) == 50 and all(c in val_lines for q in questions for c in q["choices"])
