"""corpus.py: a user's corpus as an ordered list of tasks, and what a worker does with one task.

Inputs (data.py's --input: files, folders searched recursively, or glob patterns, in sorted order):

| file | documents |
|---|---|
| `.txt`, `.txt.gz`, `.txt.zst` | the whole file is one document (newlines normalised as in Python's text mode) |
| `.jsonl`, `.jsonl.gz`, `.jsonl.zst` | one JSON object per line, the document in its `text` field (`--text_key`) |
| `.parquet` | one row per document, the document in its `text` column (`--text_key`); FineWeb-Edu's format |

or a Hugging Face dataset streamed through `datasets` (`--hf_dataset`; optional, imported only there).

The corpus is cut into tasks of about TASK_BYTES of input, in a fixed order that depends only on the inputs
(never on the number of workers): a run of .txt files, a line-aligned block of a .jsonl file (read and
decompressed here, in the main process; the worker parses it), a row group of a parquet file, or a batch of
streamed rows. `run_task` turns one task into tokens: its non-empty documents, each followed by the
tokenizer's separator, with each document's length and name ("path" for a text file, "path:LINE" for a jsonl
line, "path:ROW" for a parquet row). `run_tasks` runs them on a pool of worker processes (spawned, each
loading the tokenizer once), a few tasks per worker in flight, and yields the results in task order; data.py
hands them to shards.py's writer.

Validation documents are held out whole by `is_val_document`: a hash of the document's index in the corpus,
so the split is the same on every run, for any number of workers, and after a resume.

Imports numpy, tokenizer.py and the standard library; pyarrow (parquet), zstandard (.zst) and datasets only on
their paths.
Nothing runs at import.
"""

import collections
import glob
import gzip
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import NamedTuple

import numpy as np

from support import tokenizer

TASK_BYTES = 4 << 20            # input per task: ~1M tokens, about a second of one worker's time
MAX_FILES_PER_TASK = 256
FORMATS = (".txt", ".txt.gz", ".txt.zst", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
FORMATS_HELP = ".txt files (one document each), .jsonl files (one {\"text\": ...} per line), .parquet files " \
               "(a text column), .gz/.zst-compressed .txt/.jsonl, or folders or globs of them"
_FIX = {"pyarrow": "pip install pyarrow", "zstandard": "pip install zstandard", "datasets": "pip install datasets"}


class Task(NamedTuple):
    kind: str                   # "txt" | "jsonl" | "parquet" | "texts"
    size: int                   # bytes of input it covers (compressed bytes for compressed files), for progress
    paths: tuple = ()           # txt: the files; jsonl / parquet: the one file
    first: int = 1              # jsonl: the line number of the blob's first line; parquet: the row group
    blob: bytes = b""           # jsonl: whole lines, decompressed
    names: tuple = ()           # texts: a name per document
    texts: tuple = ()           # texts: the documents
    splits: tuple | None = None  # texts: a fixed split per document ("train" / "val"), else the hash decides


class Result(NamedTuple):
    tokens: np.ndarray          # the non-empty documents' ids, each followed by the separator
    lengths: np.ndarray         # tokens per document, separator included
    names: list                 # a name per document
    splits: list | None         # a fixed split per document, or None
    size: int                   # Task.size


# ---------------------------------------------------------------------------- files
def file_format(path) -> str | None:
    """The FORMATS entry `path` ends with, or None."""
    name = str(path).lower()
    return next((f for f in FORMATS if name.endswith(f)), None)


def _expand(entry: str) -> list[Path]:
    path = Path(entry)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and file_format(p))
    if path.is_file():
        if not file_format(path):
            raise ValueError(f"--input {path}: unsupported file type; give {FORMATS_HELP}")
        return [path]
    if any(c in entry for c in "*?["):
        matches = sorted(glob.glob(entry, recursive=True))
        if not matches:
            raise FileNotFoundError(f"--input {entry}: the pattern matches no file; give {FORMATS_HELP}")
        return [f for m in matches for f in (_expand(m) if Path(m).is_dir() else [Path(m)] if file_format(m) else [])]
    raise FileNotFoundError(f"--input {path} does not exist; give {FORMATS_HELP}")


def input_entries(inputs) -> list[str]:
    """--input values: one path, a list of them, or comma-separated paths."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    return [part for entry in inputs for part in str(entry).split(",") if part]


def corpus_files(inputs) -> list[Path]:
    """The corpus files `inputs` names (files, folders searched recursively, globs), in order, each once."""
    files = [f for entry in input_entries(inputs) for f in _expand(entry)]
    return list(dict.fromkeys(files))


def _optional(module: str, path):
    try:
        return __import__(module)
    except ImportError as err:
        raise ModuleNotFoundError(f"{path} needs the {module} package, which is not installed: {_FIX[module]}") from err


def open_binary(path):
    """(decompressed binary stream, the raw file under it): the raw file's tell() is the compressed position."""
    raw = open(path, "rb")
    name = str(path).lower()
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(raw, _optional("zstandard", path)), buffer_size=1 << 20), raw
    return raw, raw


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst file's frames, one after another. zstandard's stream_reader ends quietly
    where a truncated file ends (half a corpus, read as all of it): here a file that ends inside a frame is an
    EOFError and bytes that are not zstd an OSError, as gzip's are, so readers say "cannot be decompressed"."""

    def __init__(self, raw, zstd):
        self.raw, self.zstd, self.frame, self.input, self.output = raw, zstd, None, b"", memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.output:
            data, self.input = self.input or self.raw.read(1 << 20), b""
            if not data:
                if self.frame is not None:  # the file ends inside a frame: cut short
                    raise EOFError("the file ends inside a zstd frame: it was cut short")
                return 0
            self.frame = self.frame or self.zstd.ZstdDecompressor().decompressobj()
            try:
                self.output = memoryview(self.frame.decompress(data))
            except self.zstd.ZstdError as err:
                raise OSError(f"not zstd data, or damaged ({err})") from None
            if self.frame.eof:  # the frame is complete; what follows it is the next frame
                self.input, self.frame = self.frame.unused_data, None
        count = min(len(buffer), len(self.output))
        buffer[:count], self.output = self.output[:count], self.output[count:]
        return count


def _not_text(where: str, data: bytes, err: UnicodeDecodeError | None = None, of: str = "") -> ValueError:
    """The error for bytes that are no UTF-8 text: a NUL byte (a binary file, or UTF-16), else the first bad byte."""
    if (nul := data.find(b"\0")) >= 0:
        return ValueError(f"{where}: a binary file, not text (a NUL byte at byte {nul:,}{of}; UTF-16 text has them "
                          f"too); give UTF-8 text")
    return ValueError(f"{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at byte {err.start:,}{of} is not "
                      f"UTF-8); convert it to UTF-8")


def read_text_file(path) -> str:
    """One .txt(.gz/.zst) document, newlines normalised as Python's text mode does; a ValueError for a binary
    file (a NUL byte) or one that is not UTF-8."""
    stream, raw = open_binary(path)
    try:
        with raw:
            data = stream.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot be decompressed ({type(err).__name__}: {err}); is the file "
                         f"complete?") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_text(str(path), data, err) from None
    if "\0" in text:
        raise _not_text(str(path), data)
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------- tasks
def _jsonl_tasks(path: Path, task_bytes: int):
    stream, raw = open_binary(path)
    line, position = 1, 0
    with raw:
        while True:
            try:
                blob = stream.read(task_bytes)
                if blob and not blob.endswith(b"\n"):
                    blob += stream.readline()  # whole lines only
            except (OSError, EOFError) as err:
                raise ValueError(f"{path}: cannot be decompressed after line {line} ({type(err).__name__}: {err}); "
                                 f"is the file complete?") from err
            if not blob:
                return
            yield Task("jsonl", raw.tell() - position, paths=(str(path),), first=line, blob=blob)
            position, line = raw.tell(), line + blob.count(b"\n")


def _parquet_tasks(path: Path, text_key: str):
    _optional("pyarrow", path)
    import pyarrow.parquet as pq
    try:
        info = pq.ParquetFile(path).metadata
    except Exception as err:
        raise ValueError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from err
    if text_key not in info.schema.names:
        raise ValueError(f"{path}: no column {text_key!r} (columns: {', '.join(info.schema.names)}); "
                         f"name the text column with --text_key")
    size = path.stat().st_size
    for group in range(info.num_row_groups):
        yield Task("parquet", size * info.row_group(group).num_rows // max(info.num_rows, 1), paths=(str(path),),
                   first=group)


def file_tasks(files, text_key: str = "text", task_bytes: int = TASK_BYTES):
    """The tasks of a list of corpus files, in order (see the module docstring)."""
    run, run_bytes = [], 0
    for path in files:
        kind = file_format(path).split(".")[1]
        if kind == "txt":
            run.append(str(path))
            run_bytes += path.stat().st_size
            if run_bytes >= task_bytes or len(run) >= MAX_FILES_PER_TASK:
                yield Task("txt", run_bytes, paths=tuple(run))
                run, run_bytes = [], 0
            continue
        if run:
            yield Task("txt", run_bytes, paths=tuple(run))
            run, run_bytes = [], 0
        yield from _jsonl_tasks(path, task_bytes) if kind == "jsonl" else _parquet_tasks(path, text_key)
    if run:
        yield Task("txt", run_bytes, paths=tuple(run))


def hf_dataset_tasks(name: str, config: str | None, split: str, text_key: str = "text",
                     task_bytes: int = TASK_BYTES):
    """Tasks of a Hugging Face dataset streamed with `datasets` (needs internet), rows named "NAME:ROW"."""
    datasets = _optional("datasets", f"--hf_dataset={name}")
    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:
        raise ValueError(f"--hf_dataset={name} (config {config}, split {split}) cannot be opened "
                         f"({type(err).__name__}: {err}); check the name, --hf_config and --hf_split") from err
    names, texts, size = [], [], 0
    for index, row in enumerate(rows):
        text = row.get(text_key) if isinstance(row, dict) else None
        if not isinstance(text, str):
            fields = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"--hf_dataset={name}: row {index} has no string {text_key!r} field (it has: {fields}); "
                             f"name the text field with --text_key")
        names.append(f"{name}:{index}")
        texts.append(text)
        size += len(text)
        if size >= task_bytes:
            yield Task("texts", size, names=tuple(names), texts=tuple(texts))
            names, texts, size = [], [], 0
    if texts:
        yield Task("texts", size, names=tuple(names), texts=tuple(texts))


# ---------------------------------------------------------------------------- a worker's task
def _jsonl_documents(task: Task, text_key: str):
    path = task.paths[0]
    for offset, line in enumerate(task.blob.split(b"\n")):
        if not line.strip():
            continue
        line_no, where = task.first + offset, f"{path}, line {task.first + offset}"
        try:  # a UTF-8 byte order mark may open the file
            row = json.loads(line.decode("utf-8-sig" if line_no == 1 else "utf-8"))
        except UnicodeDecodeError as err:
            raise _not_text(where, line, err, " of the line") from None
        except ValueError as err:
            if b"\0" in line:
                raise _not_text(where, line, of=" of the line") from None
            raise ValueError(f"{where}: not valid JSON ({err}); each line must be a JSON object with a "
                             f"{text_key!r} field") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a JSON {type(row).__name__}, not an object; each line must be a JSON object "
                             f"like {{\"{text_key}\": \"...\"}}")
        if not isinstance(row.get(text_key), str):
            has = f"{text_key!r} holds {type(row[text_key]).__name__}" if text_key in row else \
                f"it has: {', '.join(row)}" if row else "it has no field"
            raise ValueError(f"{where}: no string {text_key!r} field ({has}); name the document's field with "
                             f"--text_key (default text)")
        yield f"{path}:{line_no}", row[text_key]


def _parquet_documents(task: Task, text_key: str):
    import pyarrow.parquet as pq
    path, group = task.paths[0], task.first
    parquet = pq.ParquetFile(path)
    first_row = sum(parquet.metadata.row_group(g).num_rows for g in range(group))
    for offset, text in enumerate(parquet.read_row_group(group, columns=[text_key]).column(0).to_pylist()):
        if not isinstance(text, str):
            raise ValueError(f"{path}, row {first_row + offset + 1}: the {text_key!r} column holds "
                             f"{type(text).__name__}, not text; name the text column with --text_key")
        yield f"{path}:{first_row + offset + 1}", text


def run_task(task: Task, tok, text_key: str = "text") -> Result:
    """Tokenize one task's non-empty documents (in a worker process, or in the main one)."""
    if task.kind == "txt":
        documents = ((path, read_text_file(path)) for path in task.paths)
    elif task.kind == "jsonl":
        documents = _jsonl_documents(task, text_key)
    elif task.kind == "parquet":
        documents = _parquet_documents(task, text_key)
    else:
        documents = zip(task.names, task.texts, task.splits or [None] * len(task.texts))
    kept = [d for d in documents if d[1].strip()]  # an empty document is skipped, never a lone separator
    tokens, lengths = tok.encode_documents([d[1] for d in kept])
    splits = [d[2] for d in kept] if task.splits is not None else None
    return Result(tokens, lengths, [d[0] for d in kept], splits, task.size)


# ---------------------------------------------------------------------------- the workers
_WORKER = {}


def _worker_init(spec, eot, text_key) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the main process, which then stops the pool
    _WORKER.update(tokenizer=tokenizer.load_tokenizer(spec, eot), text_key=text_key)


def _worker_run(task):
    return run_task(task, _WORKER["tokenizer"], _WORKER["text_key"])


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_tasks(tasks, tok, eot, text_key: str, workers: int, stats: dict):
    """corpus.Result of each task, in task order: in this process (1 worker) or on a pool of `workers`, with
    at most 2 tasks per worker in flight (the corpus is read as it is tokenized, never ahead of it)."""
    if workers <= 1:
        for task in tasks:
            yield run_task(task, tok, text_key)
        return
    # spawn: a fresh interpreter per worker (a forked Hugging Face tokenizer may deadlock); a worker that dies
    # (killed, out of memory) is an error, never a silent hang
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _worker_init, (tok.spec, eot, text_key))
    try:
        pending = collections.deque()
        for task in itertools.chain(tasks, [None]):
            if task is not None:
                pending.append(pool.submit(_worker_run, task))
            while pending and (len(pending) > 2 * workers or pending[0].done() or task is None):
                start = time.perf_counter()
                try:
                    result = pending.popleft().result()
                except BrokenProcessPool as err:
                    raise RuntimeError(f"a tokenizer worker process died ({err}); was it out of memory? "
                                       f"Rerun the same command (it resumes), with fewer --workers") from None
                stats["wait_s"] += time.perf_counter() - start
                yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def is_val_document(index: int, val_fraction: float) -> bool:
    """Whether document `index` is held out: a hash of the index, so the split is the same on every run."""
    digest = hashlib.blake2b(str(index).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction
