"""shards.py: the on-disk token format: a resumable shard writer and a memory-mapped reader.

A prepared data directory holds, per split ("train", "val"), shards `train_00000.bin`, `train_00001.bin`, ...:
raw token ids in meta.json's dtype (uint16 when the vocabulary fits, else uint32), every shard exactly
`shard_tokens` long except the split's last. The shards of a split are one stream cut at fixed token counts
(a document may continue in the next shard), so the stream does not depend on the shard size. meta.json,
written last, indexes them: {"shards": {"train": [{"file": ..., "tokens": ...}, ...], "val": [...]}, ...};
its presence marks a complete directory.

Writing (`Writer`): documents arrive in corpus order (whole tasks of corpus.py, from any number of workers);
each is appended to its split's current shard. Everything is written in a sibling work folder, `DIR.preparing`
(`work_dir`), so that a folder prepared before stays exactly as it was, readable, until the new preparation has
succeeded; a preparation that fails on its input removes the work folder (`Writer.discard`). Whenever a shard
fills up, the writer records a checkpoint there, prepare_state.json: the settings, how far the corpus was read
(task, document) and every split's complete shards and the length of its current one. An interrupted preparation
restarts from that checkpoint: the current shards are cut back to the recorded length and the corpus is read
again from the recorded task, so the result is byte-identical to an uninterrupted run. Its last document is held
back until the next one arrives, so that at the end it can go to a split that would otherwise stay empty. An
optional last step may rewrite the closed shards before meta.json is written (compact.py's vocabulary compaction).

Moving in (`install`): once the work folder's meta.json is written, the checkpoint is renamed moving_in.json (no
run resumes from it), DIR's meta.json is removed, DIR's old shards that the new index does not name are deleted,
the new shards are renamed into DIR, and meta.json is renamed in last; then the work folder goes. A crash during
the move leaves DIR without meta.json (it reads as interrupted) and the work folder's meta.json marks the move as
owed: `recover`, which the next preparation of DIR runs first, repeats it (every step can run twice), and a rerun
of the same command then has nothing left to do. Files in DIR that are not ours are never touched, and a DIR
holding files a preparation would replace that data.py did not write (a meta.json not of data.py's, or shard
names without data.py's meta.json) is refused before anything is written and again before the move
(`check_out_dir_is_ours`). A checkpoint that an older data.py left inside DIR itself is moved into the work folder
and resumed there.

Reading (`open_split`): a split is a `TokenStream`, its shards as one sequence (len() and slicing), each
shard an np.memmap, so nothing is read into memory until a window is sliced out. Every shard's size is
checked against meta.json first. Directories of format 1 (one `train.bin` / `val.bin` each) read as one shard.

Imports numpy, files.py and the standard library. Nothing runs at import.
"""

import contextlib
import errno
import json
import os
import re
from pathlib import Path

import numpy as np

from support import files

SPLITS = ("train", "val")
META, STATE = "meta.json", "prepare_state.json"
MOVING = "moving_in.json"       # the finished run's checkpoint while `install` moves it in: never resumed from
MAX_LISTED_DOCUMENTS = 10_000   # meta.json names at most this many documents per split (a huge corpus: counts only)
WORK_SUFFIX = ".preparing"      # DIR.preparing: where a preparation of DIR writes until it has succeeded
_OUR_FILES = re.compile(r"(train|val)(_\d{5})?\.bin(\.tmp)?")  # .tmp: a shard being rewritten (compact.py)
_OUR_JSON = re.compile(r"(meta|prepare_state|moving_in)\.json(\.tmp-\d+)?")  # .tmp-PID: files.write_text_atomically's
OUR_META_KEYS = ("tokenizer", "vocab_size", "train_tokens", "val_tokens")  # in every meta.json data.py ever wrote


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}.bin"


@contextlib.contextmanager
def _naming(path):
    """An OSError inside names `path` (a failed write or flush alone says only "No space left on device")."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def _write_json(path: Path, obj) -> None:
    with _naming(path):
        files.write_text_atomically(path, json.dumps(obj, indent=1) + "\n")


def work_dir(out_dir) -> Path:
    """The sibling folder a preparation of out_dir writes in until it has succeeded: DIR.preparing (beside the
    target of a symlinked DIR, so the final renames stay on one file system)."""
    out = Path(os.path.normpath(out_dir))
    if out.name in ("", ".", "..") or out.is_symlink():
        out = Path(os.path.realpath(out))
    return out.with_name(out.name + WORK_SUFFIX)


def os_error_line(err: OSError) -> str:
    """An OSError as one line that names its file and, where there is one, the fix."""
    where = f"{err.filename} -> {err.filename2}" if err.filename2 else err.filename
    line = f"{where}: {err.strerror}" if where else str(err.strerror or err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        line += ("; free some space (or give another --out_dir on a disk with room), then rerun the same command: "
                 "it resumes from the last complete shard")
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        line += "; check that you may read the input and write the output folder and its parent"
    return line


# ---------------------------------------------------------------------------- writing
class _SplitWriter:
    """One split's shards: complete ones listed, the current one open for appending."""

    def __init__(self, out_dir: Path, split: str, dtype: str, shard_tokens: int, saved: dict | None = None):
        saved = saved or {"shards": [], "current_tokens": 0, "documents": 0, "names": []}
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, np.dtype(dtype), shard_tokens
        self.shards, self.current = list(saved["shards"]), saved["current_tokens"]
        self.documents, self.names, self.filled = saved["documents"], list(saved["names"]), False
        for path in out_dir.glob(f"{split}_*.bin"):  # shards written after the checkpoint are written again
            if _OUR_FILES.fullmatch(path.name) and int(path.stem.split("_")[1]) > len(self.shards):
                path.unlink()
        self._open(keep=self.current)

    def _open(self, keep: int) -> None:
        path = self.out_dir / shard_name(self.split, len(self.shards))
        if keep and (not path.is_file() or path.stat().st_size < keep * self.dtype.itemsize):
            raise ValueError(f"cannot resume: {path} is shorter than prepare_state.json records; delete "
                             f"{self.out_dir / STATE} to start the preparation over")
        self.file = open(path, "r+b" if keep else "w+b")
        self.file.truncate(keep * self.dtype.itemsize)
        self.file.seek(0, os.SEEK_END)

    def _sync(self) -> None:
        with _naming(self.file.name):
            self.file.flush()
            os.fsync(self.file.fileno())

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            piece = tokens[:self.shard_tokens - self.current]
            with _naming(self.file.name):
                self.file.write(piece.tobytes())
            self.current, tokens = self.current + len(piece), tokens[len(piece):]
            if self.current == self.shard_tokens:
                self._sync()
                self.file.close()
                self.shards.append({"file": shard_name(self.split, len(self.shards)), "tokens": self.current})
                self.current, self.filled = 0, True
                self._open(keep=0)

    def state(self) -> dict:
        self._sync()
        return {"shards": self.shards, "current_tokens": self.current, "documents": self.documents,
                "names": self.names}

    def close(self) -> list[dict]:
        """Close the current shard (dropped when empty); the split's shard index."""
        self._sync()
        self.file.close()
        if self.current:
            self.shards.append({"file": shard_name(self.split, len(self.shards)), "tokens": self.current})
        else:
            (self.out_dir / shard_name(self.split, len(self.shards))).unlink(missing_ok=True)
        return self.shards


class Writer:
    """Documents in corpus order -> the shards of both splits, resumable (see the module docstring).

    Everything is written in `work` (work_dir(out_dir)); `finish` moves the result into out_dir. `settings`
    (JSON-able flags) must equal the interrupted run's to resume it; when `inputs` (what identifies the input
    files) changed, there is nothing left to resume and the preparation starts over. `split_of(index)` gives the
    split of document `index` when a task does not fix it. After construction, `next_task` and `skip_documents`
    say where to start reading the corpus: the caller feeds `add` the results of tasks next_task, next_task + 1, ...
    """

    def __init__(self, out_dir, settings: dict, inputs, dtype: str, shard_tokens: int, split_of):
        self.out_dir, self.work = Path(out_dir), work_dir(out_dir)
        self.settings, self.inputs, self.split_of = settings, inputs, split_of
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"the output folder {self.out_dir} is a file; give a folder (--out_dir)")
        check_meta_is_ours(self.out_dir)  # before anything is written: the finished preparation replaces it
        recover(self.out_dir)
        check_out_dir_is_ours(self.out_dir)  # after recover: the half-moved-in shards it finished were ours
        state_path, state = self.work / STATE, None
        if (self.out_dir / STATE).is_file() and not (self.out_dir / META).is_file() and not state_path.is_file():
            self._adopt()
        if state_path.is_file():
            try:
                state = json.loads(state_path.read_text())
                old_settings, old_inputs = state["settings"], state["inputs"]
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{state_path} is damaged ({err}); delete it to start the preparation over") from None
            if old_settings != settings:
                changed = sorted(k for k in set(settings) | set(old_settings) if settings.get(k) != old_settings.get(k))
                raise ValueError(f"{self.work} holds an interrupted preparation of {self.out_dir} with other settings "
                                 f"({', '.join(changed)} differ): rerun it with the same flags to resume, or "
                                 f"delete {self.work} to start over")
            if old_inputs != inputs:
                print(f"data.py: {self.out_dir}: the input files changed since the interrupted preparation: "
                      f"starting over", flush=True)
                state = None
        if state is None:  # a fresh start: remove what an earlier preparation left (never files that are not ours)
            _make_work_dir(self.out_dir, self.work)
            _remove_ours(self.work)
        saved = state["splits"] if state else {}
        self.writers = {s: _SplitWriter(self.work, s, dtype, shard_tokens, saved.get(s)) for s in SPLITS}
        self.next_task = state["next_task"] if state else 0
        self.skip_documents = state["skip_documents"] if state else 0
        self.next_index = state["next_index"] if state else 0  # corpus index of the next document to arrive
        self.resumed = state is not None
        self._task, self._pending = self.next_task, None
        if not state:
            self.checkpoint()

    def _adopt(self) -> None:
        """Move a preparation that an older data.py interrupted inside out_dir into the work folder, to resume it
        there (the checkpoint last: a move that is itself interrupted is repeated)."""
        _make_work_dir(self.out_dir, self.work)
        for path in self.out_dir.iterdir():
            if _OUR_FILES.fullmatch(path.name):
                os.replace(path, self.work / path.name)
        os.replace(self.out_dir / STATE, self.work / STATE)

    def discard(self) -> None:
        """Close the shards and remove the work folder (the input or the flags must change: nothing to resume);
        out_dir stays as it was."""
        for w in self.writers.values():
            w.file.close()
        _remove_work(self.work)

    @property
    def documents(self) -> int:
        """Documents taken so far, the held-back one included."""
        return self.next_index

    def add(self, result, limit: int | None = None) -> None:
        """The next task's Result (corpus.py); with `limit`, no document past the limit-th is taken."""
        skip, self.skip_documents = self.skip_documents, 0
        ends = np.cumsum(result.lengths)
        for k in range(skip, len(ends)):
            if limit is not None and self.next_index >= limit:
                break
            split = result.splits[k] if result.splits else "val" if self.split_of(self.next_index) else "train"
            if self._pending is not None:
                self._commit(*self._pending[:3])
            self._pending = (result.tokens[ends[k] - result.lengths[k]:ends[k]], result.names[k], split, self._task, k)
            self.next_index += 1
        self._task += 1
        if any(w.filled for w in self.writers.values()):
            self.checkpoint()

    def _commit(self, tokens, name, split) -> None:
        writer = self.writers[split]
        writer.write(tokens)
        writer.documents += 1
        if len(writer.names) < MAX_LISTED_DOCUMENTS:
            writer.names.append(name)

    def checkpoint(self) -> None:
        """Record where a resume starts: at the held-back document, or at the next task."""
        task, skip = self._pending[3:] if self._pending else (self._task, 0)
        index = self.next_index - (self._pending is not None)
        splits = {s: w.state() for s, w in self.writers.items()}
        _write_json(self.work / STATE, {"settings": self.settings, "inputs": self.inputs, "next_task": task,
                                           "skip_documents": skip, "next_index": index, "splits": splits})
        for w in self.writers.values():
            w.filled = False

    def finish(self, meta: dict, source: str, transform=None) -> dict:
        """Commit the held-back document, close the shards, write meta.json (updated with the index) last, then
        move them into out_dir (`install`). `source` names the corpus in the error about too few documents.

        `transform(meta) -> meta`, if given, runs on the closed shards in `work` before meta.json is written
        (compact.py rewrites them): the resume checkpoint is removed first, since it no longer describes them."""
        if self._pending is not None:
            tokens, name, split = self._pending[:3]
            other = "val" if split == "train" else "train"
            if self.writers[other].documents == 0 and self.writers[split].documents > 0:
                split = other  # the last document fills a split that would otherwise stay empty
            self._commit(tokens, name, split)
            self._pending = None
        docs = {s: w.documents for s, w in self.writers.items()}
        shards = {s: w.close() for s, w in self.writers.items()}
        if not all(docs.values()):
            self.discard()
            found = "no non-empty document" if not any(docs.values()) else "only one non-empty document"
            raise ValueError(f"{source}: {found} (empty ones are skipped); both splits need whole documents, so "
                             f"give at least two non-empty documents (.txt files, .jsonl lines or parquet rows)")
        meta = dict(meta, shards=shards)
        for s, w in self.writers.items():
            meta.update({f"{s}_tokens": sum(x["tokens"] for x in shards[s]), f"num_{s}_documents": docs[s],
                         f"{s}_documents": w.names})
        if transform is not None:
            (self.work / STATE).unlink(missing_ok=True)  # interrupted from here on: no meta, no state, starts over
            meta = transform(meta)
        check_out_dir_is_ours(self.out_dir)  # a file of the user's put there while the preparation ran is kept too
        _write_json(self.work / META, meta)  # the preparation has succeeded: from here on, out_dir is replaced
        install(self.work, self.out_dir)
        return meta


def _remove_ours(folder: Path) -> None:
    for path in folder.iterdir():
        if _OUR_FILES.fullmatch(path.name) or path.name in (STATE, MOVING):
            path.unlink()


def _remove_work(work: Path) -> None:
    """Remove a work folder: our files, then the folder unless something else is in it."""
    if not work.is_dir():
        return
    for path in work.iterdir():
        if _OUR_FILES.fullmatch(path.name) or _OUR_JSON.fullmatch(path.name):
            path.unlink()
    with contextlib.suppress(OSError):
        work.rmdir()


def install(work, out_dir) -> None:
    """Move the complete preparation in `work` (its meta.json written) into out_dir, replacing the one there
    (the module docstring); any step may be repeated after a crash, and `recover` does."""
    work, out_dir = Path(work), Path(out_dir)
    with _naming(work / META):
        if (work / STATE).is_file():  # kept to identify the run (`recover`), under a name no run resumes from
            os.replace(work / STATE, work / MOVING)
        index = read_meta(work / META)["shards"]
        new = [s["file"] for split in SPLITS for s in index[split]]
        out_dir.mkdir(parents=True, exist_ok=True)
        check_meta_is_ours(out_dir)  # a user's meta.json put there since the preparation began is kept too
        (out_dir / META).unlink(missing_ok=True)  # from here until meta.json is back, out_dir reads as interrupted
        files.fsync_dir(out_dir)
        for path in out_dir.iterdir():
            if (_OUR_FILES.fullmatch(path.name) and path.name not in new) or path.name == STATE:
                path.unlink()  # the old preparation's shards, a checkpoint of an older in-place preparation
        for name in new:
            if (work / name).is_file():
                os.replace(work / name, out_dir / name)
            elif not (out_dir / name).is_file():
                raise ValueError(f"cannot finish the preparation of {out_dir}: its shard {name} is in neither "
                                 f"{work} nor {out_dir}; delete {work} and prepare it again")
        files.fsync_dir(out_dir)
        os.replace(work / META, out_dir / META)
        files.fsync_dir(out_dir)
    _remove_work(work)


def check_meta_is_ours(out_dir) -> None:
    """ValueError unless out_dir's meta.json, if it has one, is data.py's own (a JSON object with OUR_META_KEYS):
    moving a preparation in replaces meta.json, and a file of the user's by that name is never replaced."""
    path = Path(out_dir) / META
    if not path.exists() and not path.is_symlink():
        return
    try:
        meta = json.loads(path.read_text()) if path.is_file() else None
    except (ValueError, UnicodeDecodeError):
        meta = None
    if isinstance(meta, dict) and all(k in meta for k in OUR_META_KEYS):
        return
    why = "it is not a file" if not path.is_file() else "it is not a JSON object" if not isinstance(meta, dict) \
        else "it has no " + ", ".join(k for k in OUR_META_KEYS if k not in meta)
    raise ValueError(f"{path} is not a meta.json data.py wrote ({why}) and data.py would replace it: move it away, "
                     "or give another --out_dir")


def _is_checkpoint(path: Path) -> bool:
    """Whether `path` is a prepare_state.json a preparation of data.py wrote (a JSON object with its settings)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(state, dict) and "settings" in state and "inputs" in state


def check_out_dir_is_ours(out_dir) -> None:
    """ValueError unless every file in out_dir that a preparation replaces or removes (meta.json, shard names,
    prepare_state.json) is data.py's: they are when out_dir has data.py's meta.json, or the checkpoint of a
    preparation an older data.py interrupted inside it; never a user's `train_00000.bin` in a folder of theirs."""
    out_dir = Path(out_dir)
    check_meta_is_ours(out_dir)
    if (out_dir / META).is_file() or not out_dir.is_dir() or _is_checkpoint(out_dir / STATE):
        return
    theirs = sorted(p.name for p in out_dir.iterdir() if _OUR_FILES.fullmatch(p.name) or p.name == STATE)
    if theirs:
        named = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
        raise ValueError(f"{out_dir} holds {named}, which data.py did not write (the folder has no meta.json of "
                         f"data.py's) and a preparation would replace: move them away, or give another --out_dir")


def _make_work_dir(out_dir: Path, work: Path) -> None:
    """Create the work folder (and its parents), or a one-line error saying why --out_dir cannot be there."""
    existing = next(p for p in (work, *work.parents) if p.exists() or p.is_symlink())
    if existing == work and not work.is_dir():
        raise ValueError(f"{work} is a file of yours where data.py makes the work folder of --out_dir={out_dir}; "
                         f"move it away, or give another --out_dir")
    if not existing.is_dir():
        raise ValueError(f"{existing} is a file, not a folder; pick another --out_dir")
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise  # os_error_line names the folder and the fix
        raise ValueError(f"cannot create a folder in {existing} ({err.strerror}: {err.filename}); pick an --out_dir "
                         f"in a folder you can write") from None


@contextlib.contextmanager
def preparing(out_dir):
    """One data.py per out_dir: an OS lock on OUT_DIR.lock (files.take_lock) while preparing, a second one refused
    at once. Where no lock file can be made (a parent that is a file), the preparation's first write says why."""
    path, handle = Path(f"{Path(out_dir)}.lock"), None
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = files.take_lock(path, f"{out_dir} is being prepared by another data.py ({{holder}}); wait for it "
                                       "to finish, or give another --out_dir")
    try:
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # before the release: whoever opens the path next locks a new file
            handle.close()


def recover(out_dir, settings=None, inputs=None) -> bool:
    """Finish the move of a preparation of out_dir that had succeeded when it was stopped (its work folder holds
    meta.json). True when one was moved in and its checkpoint shows these `settings` and `inputs`."""
    work = work_dir(out_dir)
    if not (work / META).is_file():
        return False
    try:
        state = json.loads((work / MOVING if (work / MOVING).is_file() else work / STATE).read_text())
        same = settings is not None and (state["settings"], state["inputs"]) == (settings, inputs)
    except (OSError, ValueError, KeyError, TypeError):
        same = False  # no checkpoint (a compaction removes it): the preparation is moved in, not recognised
    print(f"data.py: {out_dir}: moving in the completed preparation that {work} holds", flush=True)
    install(work, out_dir)
    return same


# ---------------------------------------------------------------------------- reading
def read_meta(path: Path) -> dict:
    """A meta.json, or a ValueError naming the file when it is not one."""
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): it was cut short or edited") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int):
        raise ValueError(f"{path} is not a data.py meta.json (no integer \"vocab_size\")")
    return meta


class TokenStream:
    """The shards of one split as one read-only token sequence: len(), stream[i], stream[a:b] (an array; a view
    of the memory map when the slice lies in one shard). Slices may cross shard boundaries."""

    def __init__(self, shards: list[np.memmap], files: list[Path]):
        self.shards, self.files = shards, files
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple:
        return (len(self),)

    def __getitem__(self, key):
        if not isinstance(key, slice):
            index = int(key) + (len(self) if int(key) < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"token {key} is outside a stream of {len(self)}")
            shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
            return self.shards[shard][index - self.offsets[shard]]
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("a TokenStream slices contiguously only (step 1)")
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces = []
        while start < stop:
            end = min(stop, int(self.offsets[first + 1]))
            pieces.append(self.shards[first][start - self.offsets[first]:end - self.offsets[first]])
            start, first = end, first + 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces) if pieces else np.empty(0, self.dtype)

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole.astype(dtype) if dtype is not None else np.asarray(whole)


def split_files(data_dir, meta: dict, split: str) -> list[tuple[Path, int | None]]:
    """[(shard path, tokens meta.json lists or None)] of a split; format 1 has one file and maybe a count."""
    if "shards" not in meta:
        return [(Path(data_dir) / f"{split}.bin", meta.get(f"{split}_tokens"))]
    shards = meta["shards"].get(split) if isinstance(meta["shards"], dict) else None
    if not shards:
        raise ValueError(f"{Path(data_dir) / META} lists no shards for the {split} split")
    return [(Path(data_dir) / s["file"], s["tokens"]) for s in shards]


def open_split(data_dir, meta: dict, split: str, hint: str) -> TokenStream:
    """A split as a TokenStream, every shard checked against meta.json first; errors name the split and file."""
    dtype = np.dtype(meta.get("dtype", "uint16"))
    maps, files = [], []
    for path, tokens in split_files(data_dir, meta, split):
        if not path.is_file():
            raise FileNotFoundError(f"the {split} split's shard {path} is missing; {hint}")
        size = path.stat().st_size
        expected = f"{tokens:,} {dtype.name} tokens = {tokens * dtype.itemsize:,} bytes" if tokens is not None else \
            f"a non-empty whole number of {dtype.name} tokens"
        if size == 0 or size % dtype.itemsize or (tokens is not None and size != tokens * dtype.itemsize):
            raise ValueError(f"the {split} split's shard {path} has {size} bytes, but meta.json says {expected}: "
                             f"the file is truncated or from another preparation; {hint}")
        maps.append(np.memmap(path, dtype=dtype, mode="r"))
        files.append(path)
    return TokenStream(maps, files)
