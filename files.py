"""files.py: writing a file so that a crash never leaves it torn: the one home of atomic writes.

Checkpoints' meta.json, log.jsonl rewritten on resume, reports, compare.py's records and the token shards'
meta.json and resume state all go through `write_text_atomically`. Standard library only, so that data
preparation (shards.py, run in worker processes) does not import torch. Nothing runs at import.
"""

import os


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
