"""compact.py: vocabulary compaction: only the token ids a corpus uses, renumbered 0..K-1, and text <-> those ids.

    python data.py --compact_vocab=true            # Shakespeare -> data/shakespeare-compact/ (data/shakespeare stays)
    python data.py --input=DIR --compact_vocab     # your corpus -> data/<input name>-compact/

Why: most of a small model's training step on a CPU is the vocabulary head, and a small corpus uses few of its
tokenizer's ids (Shakespeare: about 19k of GPT-2's 50,257). After a preparation has written its shards,
`compact` gives the ids that occur in the train OR the val split, plus the separator (always kept), the new ids
0..K-1 in the order of their original ids (so the map depends only on the corpus), and rewrites every shard with
the new ids (uint16 whenever K fits). A model with --vocab_size=K (rounded up to 64) then trains on the same text
as one with the full vocabulary, with a head of K rows instead of 50,304.

meta.json of a compacted directory (every key name below lives in this file):
  * vocab_size K, eot_token the separator's new id, dtype the shards' dtype;
  * "tokenizer": "<original name>+compact:<12 hex digits>" and "tokenizer_fingerprint": "sha256:<64 hex>", the
    vocabulary's identity: sha256 of the original tokenizer's fingerprint and the ids list, so two compactions
    share it only when they keep the same ids of the same tokenizer. The name carries the first 12 digits because
    a checkpoint records its data's tokenizer name (train.py): a model is then refused on data with another map
    (`vocab_mismatch`, used by data.check_vocab, eval.py and config.check_resumable), and code that knows only
    GPT-2's ids (tokenizer == "gpt2": export.py, older eval.py) treats compacted data as another tokenizer instead
    of reading its ids as GPT-2's;
  * "compact_vocab": {"original": the values those keys had before compaction, "ids": [original id of new id 0,
    of new id 1, ...]}.
DATA_FORMAT_VERSION does not change: the shards and the index are read exactly as before, by old readers too;
only the ids' meaning changes, and the tokenizer name and fingerprint carry it to every reader that turns ids into
text (old ones included, which decode only "gpt2" data). A bump would also make data.prepare_if_missing rebuild
the main job's data/shakespeare, whose bytes must not move.

Text <-> ids: `encode_with_meta(meta, text)` / `decode_with_meta(meta, ids)`, or the `CompactTokenizer` they use
(encode_ordinary, decode, eot_token; eval.py and tasks.py take it through text_tokenizer). Tokens outside the
compacted vocabulary (text the corpus never contained) are an error, `UnknownTokenError`, naming them and their
number: they never map to a fallback id, which would feed a model a token it never saw. tasks.py drops, and
counts, the task items that contain such tokens.

Imports numpy, tokenizer.py, shards.py and the standard library. Nothing runs at import.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

from support import files, shards, tokenizer

KEY, IDS, ORIGINAL = "compact_vocab", "ids", "original"   # meta.json: meta[KEY] = {ORIGINAL: {...}, IDS: [...]}
ORIGINAL_KEYS = ("tokenizer", "tokenizer_fingerprint", "vocab_size", "eot_token", "dtype")  # what compaction changes
NAME_MARK = "+compact:"          # "gpt2+compact:0123456789ab": the name of a compacted vocabulary
CHUNK = 1 << 24                  # tokens per read while counting and rewriting: memory stays at tens of MB


# ---------------------------------------------------------------------------- preparing
def used_ids(out_dir, meta: dict) -> np.ndarray:
    """Sorted distinct ids of both splits' shards, and the separator."""
    seen = np.zeros(meta["vocab_size"], dtype=bool)
    seen[meta["eot_token"]] = True
    for split in shards.SPLITS:
        for path, _ in shards.split_files(out_dir, meta, split):
            tokens = np.memmap(path, dtype=meta["dtype"], mode="r")
            for start in range(0, len(tokens), CHUNK):
                seen[tokens[start:start + CHUNK]] = True
    return np.flatnonzero(seen)


def fingerprint(original_fingerprint: str, ids) -> str:
    """The compacted vocabulary's fingerprint: sha256 of the original's and of the ids, as "sha256:HEX"."""
    text = f"{original_fingerprint}\n" + ",".join(str(int(i)) for i in ids)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def compact(out_dir, meta: dict) -> dict:
    """Rewrite the shards of a just-prepared directory with dense ids; returns its meta.json content.

    Each shard is written under a temporary name, then renamed over the old one. shards.Writer.finish calls this
    after removing its resume checkpoint and before writing meta.json, so an interrupted compaction leaves a
    directory that reads as unprepared, and rerunning the command prepares it again from the start.
    """
    ids = used_ids(out_dir, meta)
    dtype = "uint16" if len(ids) <= 2**16 else "uint32"
    lookup = np.zeros(meta["vocab_size"], dtype=dtype)
    lookup[ids] = np.arange(len(ids))
    for split in shards.SPLITS:
        for path, _ in shards.split_files(out_dir, meta, split):
            tokens, tmp = np.memmap(path, dtype=meta["dtype"], mode="r"), path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                for start in range(0, len(tokens), CHUNK):
                    f.write(lookup[tokens[start:start + CHUNK]].tobytes())
            del tokens  # the map is closed before its file is replaced
            os.replace(tmp, path)
    fp = fingerprint(meta["tokenizer_fingerprint"], ids)
    new = {"tokenizer": meta["tokenizer"] + NAME_MARK + fp.split(":")[1][:12], "tokenizer_fingerprint": fp,
           "vocab_size": len(ids), "eot_token": int(lookup[meta["eot_token"]]), "dtype": dtype}
    return {**meta, **new, KEY: {ORIGINAL: {k: meta[k] for k in ORIGINAL_KEYS}, IDS: ids.tolist()}}


def transform(out_dir):
    """`compact` of out_dir as shards.Writer.finish's transform (data.py --compact_vocab)."""
    return lambda meta: compact(out_dir, meta)


def summary(meta: dict) -> str:
    """data.py's line about a compaction, with the --vocab_size a model needs (the next multiple of 64, as
    data.check_vocab suggests)."""
    return (f"{meta[KEY][ORIGINAL]['vocab_size']:,} ids compacted to {meta['vocab_size']:,} ({meta['tokenizer']}); "
            f"train with --vocab_size={-(-meta['vocab_size'] // 64) * 64}")


# ---------------------------------------------------------------------------- identity
def original(meta: dict) -> dict:
    """The tokenizer keys of meta.json as they were before compaction (meta itself when not compacted)."""
    return {**meta, **meta[KEY][ORIGINAL]} if KEY in meta else meta


def _described(name: str) -> str:
    if NAME_MARK in name:
        return f"{name!r} tokens (a compacted vocabulary: one corpus's ids, renumbered)"
    return f"{name!r} tokens"


def vocab_mismatch(meta: dict, trained: dict) -> str | None:
    """How the vocabulary of data `meta` differs from the one a checkpoint was trained on, or None when they agree.

    `trained` is the checkpoint's meta.json: train.py records its data's "tokenizer" (a compacted vocabulary's
    name holds its map's hash); a "tokenizer_fingerprint" there is compared too. Missing keys mean GPT-2, as in
    checkpoints and data of every version.
    """
    ours, theirs = meta.get("tokenizer", "gpt2"), trained.get("tokenizer", "gpt2")
    fp_ours, fp_theirs = meta.get("tokenizer_fingerprint"), trained.get("tokenizer_fingerprint")
    if ours == theirs and (fp_ours is None or fp_theirs is None or fp_ours == fp_theirs):
        return None
    data = f"another id table of {ours!r} (fingerprint {fp_ours})" if ours == theirs else _described(ours)
    return f"the model was trained on {_described(theirs)}, but the data holds {data}"


# ---------------------------------------------------------------------------- text <-> ids
class UnknownTokenError(ValueError):
    """Text with tokens that a compacted vocabulary lacks: its corpus never contained them."""


class CompactTokenizer:
    """`base` (GPT-2's tiktoken Encoding or a tokenizer.Tokenizer) seen through the map of compacted data `meta`:
    encode_ordinary gives the data's ids (UnknownTokenError for tokens outside the vocabulary), decode takes them,
    eot_token is the separator's new id."""

    def __init__(self, base, meta: dict):
        info = meta[KEY]
        self.base, self.name, self.vocab_size, self.eot_token = base, meta["tokenizer"], meta["vocab_size"], \
            meta["eot_token"]
        self.ids = np.asarray(info[IDS], dtype=np.int64)                 # new id -> original id
        self.lookup = np.full(info[ORIGINAL]["vocab_size"], -1, np.int64)  # original id -> new id, -1: not kept
        self.lookup[self.ids] = np.arange(len(self.ids))

    def from_original(self, original_ids) -> list[int]:
        """The data's ids of the original tokenizer's ids; UnknownTokenError naming those it lacks."""
        original_ids = np.asarray(original_ids, dtype=np.int64)
        new = self.lookup[original_ids]
        if (new < 0).any():
            missing = list(dict.fromkeys(original_ids[new < 0].tolist()))
            shown = ", ".join(f"{self.base.decode([i])!r} (id {i})" for i in missing[:3])
            raise UnknownTokenError(f"{int((new < 0).sum())} token(s) of the text are not in the compacted vocabulary "
                                    f"{self.name!r} ({self.vocab_size:,} ids), e.g. {shown}: its corpus never "
                                    f"contained them; encode such text for data prepared without --compact_vocab")
        return new.tolist()

    def to_original(self, ids) -> list[int]:
        """The original tokenizer's ids of the data's ids."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}) for the compacted vocabulary {self.name!r}")
        return self.ids[ids].tolist()

    def encode_ordinary(self, text: str) -> list[int]:
        return self.from_original(self.base.encode_ordinary(text))

    def decode(self, ids) -> str:
        return self.base.decode(self.to_original(ids))


def base_tokenizer(meta: dict, gpt2=None):
    """The tokenizer the ids of `meta` came from, before any compaction: GPT-2's (`gpt2()`, default
    tokenizer.get_tokenizer), else tokenizer.load_tokenizer of its spec, checked against its fingerprint."""
    before = original(meta)
    name = before.get("tokenizer", "gpt2")
    if name == "gpt2":
        return (gpt2 or tokenizer.get_tokenizer)()
    spec = before.get("tokenizer_spec", name)
    tok = tokenizer.load_tokenizer(files.from_repo(spec) if Path(files.from_repo(spec)).exists() else spec)
    if before.get("tokenizer_fingerprint") not in (None, tok.fingerprint):
        raise ValueError(f"the tokenizer {spec!r} is not the one the data was prepared with (its fingerprint "
                         f"differs); use the same tokenizer file")
    return tok


def text_tokenizer(meta: dict, gpt2=None):
    """Text <-> the ids of data `meta`, for eval.py's text tasks: GPT-2's tokenizer (`gpt2()`, by default
    tokenizer.get_tokenizer), through the map of a compacted vocabulary; None for data of another tokenizer, whose
    text tasks tasks.build_tasks skips."""
    return meta_tokenizer(meta, gpt2) if original(meta).get("tokenizer", "gpt2") == "gpt2" else None


def meta_tokenizer(meta: dict, gpt2=None):
    """Text <-> the ids of data `meta`: its tokenizer, through the map when the vocabulary is compacted."""
    base = base_tokenizer(meta, gpt2)
    return CompactTokenizer(base, meta) if KEY in meta else base


def encode_with_meta(meta: dict, text: str) -> list[int]:
    """The ids of `text` in data `meta`'s vocabulary (separators inside the text are text); UnknownTokenError when
    a compacted vocabulary lacks some of its tokens."""
    return meta_tokenizer(meta).encode_ordinary(text)


def decode_with_meta(meta: dict, ids) -> str:
    """The text of ids of data `meta`'s vocabulary."""
    return meta_tokenizer(meta).decode(list(ids))
