"""checkpoint.py: training checkpoints with torch.distributed.checkpoint (DCP), atomic, for any world size.

    OUT_DIR/checkpoints/step_0000250/   .metadata + one __R_0.distcp per rank (DCP), then meta.json

Every rank writes its own shard of the model, the projector and the optimizer state (FSDP2 shards them), so
no rank gathers the whole model. A checkpoint is written under a `.tmp` name; rank 0 adds meta.json (the
configs, the step, the tokenizer, the data directory) last and renames the directory, so a directory
without meta.json or with a `.tmp` name is never taken for a checkpoint: a crash mid-save leaves the
previous one loadable. Once the new one is complete the older ones are deleted. DCP reshards on load, so
a run saved on 2 processes resumes on 1 or on 8.

eval.py, export.py and bench.py read the weights straight from DCP with `load_model` (one process, no
process group, no conversion step): a finished run needs no consolidated copy.

Imports torch, model.py and files.py. Nothing runs at import.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from support import files
import model as model_lib

CHECKPOINTS = "checkpoints"     # the folder of a run's checkpoints, inside out_dir
META = "meta.json"              # written last: its presence marks a complete checkpoint
MODEL_KEY = "gpt"               # the model's name inside the saved state ("gpt.embed.weight", ...)
_STEP_DIR = re.compile(r"step_(\d+)$")


# ---------------------------------------------------------------------------- finding checkpoints
def step_dir(out_dir, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step_{step:07d}"


def complete_checkpoints(out_dir) -> list[Path]:
    """The complete checkpoint directories of a run, oldest first."""
    folder = Path(out_dir) / CHECKPOINTS
    found = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and (p / META).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest(path) -> Path | None:
    """The newest complete checkpoint of a run directory (or `path` itself if it is a checkpoint), else None."""
    path = Path(path)
    if (path / META).is_file() and _STEP_DIR.match(path.name):
        return path
    found = complete_checkpoints(path)
    return found[-1] if found else None


def read_meta(ckpt_dir) -> dict:
    """meta.json of a checkpoint; ValueError (naming the file) when it is not readable JSON."""
    path = Path(ckpt_dir) / META
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupted ({err}); this checkpoint cannot be used: remove {ckpt_dir} to fall "
                         "back to an older one, or start a new run") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a checkpoint's metadata (a JSON object); remove {ckpt_dir}")
    return meta


def verify(ckpt_dir, meta: dict) -> None:
    """Check every file of a checkpoint against the sha256 written with it; ValueError naming the first
    damaged or missing file. A corrupted checkpoint is never loaded (and so never trained on or overwritten)."""
    ckpt_dir = Path(ckpt_dir)
    expected = meta.get("sha256")
    if not isinstance(expected, dict) or not expected:
        raise ValueError(f"{ckpt_dir / META} has no checksums: not a complete checkpoint of this version; remove it")
    world = dist.get_world_size() if _distributed() else 1
    present = [name for name in expected if (ckpt_dir / name).is_file()]
    missing = sorted(set(expected) - set(present))
    actual = _checksums(ckpt_dir, present, world)
    damaged = missing + sorted(name for name in present if actual[name] != expected[name])
    if damaged:
        how = "missing" if damaged[0] in missing else "damaged (sha256 mismatch)"
        more = f" (and {len(damaged) - 1} more files)" if len(damaged) > 1 else ""
        raise ValueError(f"checkpoint {ckpt_dir} is corrupted: {damaged[0]} is {how}{more}; it was not loaded. "
                         "Restore the file from a copy, or remove the checkpoint to fall back to an older one")


def _distributed() -> bool:
    """Whether a process group is up: then saving, verifying and loading are collectives over it."""
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _single_process_is_fine():
    """DCP warns on every call without a process group; one process reading or writing alone is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ---------------------------------------------------------------------------- writing
def _digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _checksums(folder, files, group_size: int) -> dict:
    """{file name: sha256} of the files of a checkpoint, each process hashing every group_size-th file (its share),
    all of them gathered on every process."""
    rank = dist.get_rank() if group_size > 1 else 0
    mine = {name: _digest(Path(folder) / name) for i, name in enumerate(sorted(files)) if i % group_size == rank}
    if group_size == 1:
        return mine
    gathered = [None] * group_size
    dist.all_gather_object(gathered, mine)
    return {name: digest for part in gathered for name, digest in part.items()}


def _os_error_in(err):
    """The OSError (a full disk, a permission) behind an exception DCP wrapped, or None."""
    seen = [err]
    while seen:
        e = seen.pop()
        if isinstance(e, OSError):
            return e
        seen += [x for x in (e.__cause__, e.__context__) if x is not None]
        seen += [f[0] if isinstance(f, tuple) else f for f in getattr(e, "failures", {}).values()]
    return None


def save(out_dir, step: int, state: dict, meta: dict, rank: int = 0) -> Path:
    """Write `state` (a DCP state dict: tensors, DTensors, nested dicts) as checkpoint `step` of out_dir.
    A collective under a process group: every rank calls it. Returns the checkpoint directory."""
    final = step_dir(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    distributed = _distributed()
    world = dist.get_world_size() if distributed else 1
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a save that died half-way
        tmp.mkdir(parents=True)
    if distributed:
        dist.barrier()
    try:
        with _single_process_is_fine():
            dcp.save(state, checkpoint_id=str(tmp), no_dist=not distributed)
    except Exception as err:  # DCP wraps the cause (ENOSPC...) in its own exception: surface it plainly
        cause = _os_error_in(err)
        if cause is None:
            raise
        raise OSError(cause.errno, f"writing checkpoint {tmp}: {cause.strerror}") from None
    if distributed:
        dist.barrier()  # every shard is on disk
    checksums = _checksums(tmp, [p.name for p in tmp.iterdir()], world)
    if rank == 0:
        files.write_text_atomically(tmp / META, json.dumps({**meta, "step": step, "sha256": checksums}, indent=1)
                                      + "\n")
        files.fsync_dir(tmp)
        if final.exists():  # the same step saved twice (a stop signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        files.fsync_dir(final.parent)
        for old in final.parent.iterdir():  # older checkpoints and stale temporaries
            if old != final and (old.name.endswith(".tmp") or _STEP_DIR.match(old.name)):
                shutil.rmtree(old, ignore_errors=True)
    if distributed:
        dist.barrier()
    return final


# ---------------------------------------------------------------------------- reading
def load(ckpt_dir, state: dict) -> None:
    """Fill `state` (a DCP state dict of the same keys, any sharding) in place from a verified checkpoint."""
    verify(ckpt_dir, read_meta(ckpt_dir))
    with _single_process_is_fine():
        dcp.load(state, checkpoint_id=str(ckpt_dir), no_dist=not _distributed())


def saved_keys(ckpt_dir) -> list[str]:
    """The names of everything a checkpoint holds ("model.gpt.embed.weight", "model.projector.w_up.weight", ...)."""
    return sorted(dcp.FileSystemReader(str(ckpt_dir)).read_metadata().state_dict_metadata)


def load_model(path, map_location="cpu"):
    """(GPT, meta) from a run directory or a checkpoint directory written by train.py: the model's weights
    only (no projector, no optimizer), read from DCP's shards into one process."""
    ckpt_dir = latest(path)
    if ckpt_dir is None:
        raise FileNotFoundError(f"no complete checkpoint in {path}: train one with `python train.py --out_dir=DIR` "
                                f"(it writes DIR/{CHECKPOINTS}/step_N/) or pass the right run directory")
    meta = read_meta(ckpt_dir)
    if "model_config" not in meta:
        raise ValueError(f"{ckpt_dir / META} has no model_config: not a checkpoint written by train.py")
    model = model_lib.GPT(model_lib.GPTConfig.from_dict(meta["model_config"]))
    weights = {f"{MODEL_KEY}.{key}": value for key, value in model.state_dict().items()}
    load(ckpt_dir, {"model": weights})
    return model.to(map_location), meta
