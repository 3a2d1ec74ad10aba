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

Imports torch and model.py. Nothing runs at import.
"""

import contextlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

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
    return json.loads((Path(ckpt_dir) / META).read_text())


@contextlib.contextmanager
def _single_process_is_fine():
    """DCP warns on every call without a process group; one process reading or writing alone is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ---------------------------------------------------------------------------- writing
def _write_file_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(out_dir, step: int, state: dict, meta: dict, rank: int = 0) -> Path:
    """Write `state` (a DCP state dict: tensors, DTensors, nested dicts) as checkpoint `step` of out_dir.
    A collective under a process group: every rank calls it. Returns the checkpoint directory."""
    final = step_dir(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    distributed = dist.is_available() and dist.is_initialized()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a save that died half-way
        tmp.mkdir(parents=True)
    if distributed:
        dist.barrier()
    with _single_process_is_fine():
        dcp.save(state, checkpoint_id=str(tmp), no_dist=not distributed)
    if distributed:
        dist.barrier()  # every shard is on disk
    if rank == 0:
        _write_file_atomically(tmp / META, json.dumps({**meta, "step": step}, indent=1) + "\n")
        _fsync_dir(tmp)
        if final.exists():  # the same step saved twice (a stop signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        for old in final.parent.iterdir():  # older checkpoints and stale temporaries
            if old != final and (old.name.endswith(".tmp") or _STEP_DIR.match(old.name)):
                shutil.rmtree(old, ignore_errors=True)
    if distributed:
        dist.barrier()
    return final


# ---------------------------------------------------------------------------- reading
def load(ckpt_dir, state: dict) -> None:
    """Fill `state` (a DCP state dict of the same keys, any sharding) in place from a checkpoint."""
    with _single_process_is_fine():
        dcp.load(state, checkpoint_id=str(ckpt_dir), no_dist=not (dist.is_available() and dist.is_initialized()))


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
