"""files.py: writing a file so that a crash never leaves it torn (the one home of atomic writes), the
repository-relative paths that checkpoints, logs and reports store, and the OS lock that keeps one writer per folder.

Checkpoints' meta.json, log.jsonl rewritten on resume, reports, compare.py's records and the token shards'
meta.json and resume state all go through `write_text_atomically`. Standard library only, so that data
preparation (shards.py, run in worker processes) does not import torch. Nothing runs at import.
"""

import fcntl
import json
import os
import socket

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root, above support/


def repo_relative(path) -> str:
    """`path` relative to the repository, the form checkpoints, logs and reports store (never a machine's
    absolute path); `from_repo` turns it back into a usable path."""
    return os.path.relpath(os.path.abspath(path), REPO_DIR)


def from_repo(path) -> str:
    """A path stored by `repo_relative` (or an absolute one) as a path usable from any working directory."""
    return os.path.join(REPO_DIR, path) if not os.path.isabs(path) else str(path)


def write_text_atomically(path, text: str) -> None:
    """Write a whole file so that a crash at any moment leaves the old content or the new, never a torn or empty
    file: a temporary sibling, flushed and fsynced, then renamed over `path` (and the rename made durable)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def fsync_dir(path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- log.jsonl
def write_jsonl(path, *records):
    """Append records to log.jsonl (a crash can tear only the last line, which read_log_until drops)."""
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def read_log_until(path, step):
    """The records of log.jsonl up to `step`: a resumed run drops what was logged after its checkpoint
    (a crash between two saves) and a torn last line, so every step appears once."""
    records = []
    try:
        text = open(path).read() if os.path.exists(path) else ""
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text log (not UTF-8); move it away, then resume: the run's checkpoint "
                         "does not need it") from None
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if r.get("step", 0) <= step]


def format_duration(seconds):
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


def take_lock(path, in_use: str):
    """An exclusive OS lock (flock) on the file `path`, held while the returned file stays open and released by the
    kernel when the process dies (a killed writer never leaves a stale lock). Held by someone else: ValueError
    `in_use` with "{holder}" replaced by the process that holds it, at once."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(in_use.replace("{holder}", holder)) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle
