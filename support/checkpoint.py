"""checkpoint.py: training checkpoints with torch.distributed.checkpoint (DCP), atomic, for any world size.

    OUT_DIR/checkpoints/step_0000250/   .metadata + one __R_0.distcp per rank (DCP), then meta.json

Every rank writes its own shard of the model, the projector and the optimizer state (FSDP2 shards them), so
no rank gathers the whole model. A checkpoint is written under a `.tmp` name; rank 0 adds meta.json (the
configs, the step, the tokenizer, the data directory) last and renames the directory, so a directory
without meta.json or with a `.tmp` name is never taken for a checkpoint: a crash mid-save leaves the
previous one loadable. Once the new one is complete the older ones are deleted. DCP reshards on load, so
a run saved on 2 processes resumes on 1 or on 8.

eval.py, export.py, sample.py and bench.py read the weights straight from DCP with `load_model` (one process, no
process group, no conversion step): a finished run needs no consolidated copy. They read a run the way --resume
does: `latest` refuses a damaged step_N folder (no meta.json) newer than the newest complete checkpoint instead of
falling back to an older one (data.prepared_again says when the run's data folder no longer holds what it trained
on), and a checkpoint that a run still training deletes while it is read is retried with the newest one.

Loading never runs code from the files. DCP itself unpickles `.metadata` with plain pickle and every non-tensor
item (the optimizer's hyperparameters) with torch.load(weights_only=False), so a crafted checkpoint could run
anything; here `.metadata` goes through an unpickler that knows only DCP's metadata classes (`SafeReader`) and
the items through torch.load(weights_only=True) (`SafeLoadPlanner`). Anything else, or a file name that points
outside the checkpoint, is refused with a ValueError (`RefusedCheckpoint`) naming the file, before it is used.

Imports torch, model.py and files.py. Nothing runs at import.
"""

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: `except Exception` misses it
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import model as model_lib
from support import files

CHECKPOINTS = "checkpoints"     # the folder of a run's checkpoints, inside out_dir
META = "meta.json"              # written last: its presence marks a complete checkpoint
META_DIGEST = "meta_sha256"     # meta.json's digest of its own other fields
MODEL_KEY = "gpt"               # the model's name inside the saved state ("gpt.embed.weight", ...)
_STEP_DIR = re.compile(r"step_(\d+)$")
FULL_DISK_BYTES = 64 * 2**20    # a save that failed with less free than this on its disk failed for want of room
DCP_METADATA = ".metadata"      # DCP's index of a checkpoint: a pickle
NOT_OURS = "not a checkpoint this repository wrote"
# what to do about a corrupted checkpoint: a run keeps only its newest one, so there is no older one to fall back to
RESTORE = "restore it from a copy, or start a new run in another --out_dir (a run keeps only its newest checkpoint)"
FOREIGN_OBJECTS = "it holds Python objects a checkpoint written by train.py never contains"
RELOADS = 3                     # tries at reading a run that is saving: each save deletes the checkpoint before it


# ---------------------------------------------------------------------------- finding checkpoints
def step_dir(out_dir, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step_{step:07d}"


def complete_checkpoints(out_dir) -> list[Path]:
    """The complete checkpoint directories of a run, oldest first."""
    folder = Path(out_dir) / CHECKPOINTS
    found = [p for p in folder.iterdir() if _STEP_DIR.match(p.name) and (p / META).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def incomplete_checkpoints(out_dir) -> list[Path]:
    """step_N folders without meta.json: not an interrupted save (those have .tmp names) but damage, kept."""
    folder = Path(out_dir) / CHECKPOINTS
    return sorted(p for p in folder.iterdir() if _STEP_DIR.match(p.name) and not (p / META).is_file()) \
        if folder.is_dir() else []


def damaged(folder) -> ValueError:
    """The refusal of a step_N folder without meta.json: damage, not an interrupted save (saves use .tmp names)."""
    return ValueError(f"{folder} has no {META}: a damaged checkpoint (saves write under a .tmp name); restore the "
                      "file from a copy, or move the folder away, then rerun")


def latest(path) -> Path | None:
    """The newest complete checkpoint of a run directory (or `path` itself if it is a checkpoint), else None.
    ValueError (`damaged`) when a step_N folder newer than it has no meta.json: reading the older one instead would
    silently give older weights (train.py --resume refuses the same folder). A step_N.tmp folder is a save under
    way, never damage."""
    path = Path(path)
    if (path / META).is_file() and _STEP_DIR.match(path.name):
        return path
    step = lambda folder: int(_STEP_DIR.match(folder.name).group(1))
    for look in range(2):
        found = complete_checkpoints(path)
        newest = found[-1] if found else None
        newer = [p for p in incomplete_checkpoints(path) if newest is None or step(p) > step(newest)]
        if not newer:
            return newest
        if look == 0:  # a scan racing a save may see a folder it deletes (an older step, the same step saved
            time.sleep(0.2)  # twice) without its meta.json for a moment: look again before calling it damage
    raise damaged(newer[-1])


def read_meta(ckpt_dir) -> dict:
    """meta.json of a checkpoint; ValueError (naming the file) when it is not readable JSON."""
    path = Path(ckpt_dir) / META
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupted ({err}); this checkpoint cannot be used: {RESTORE}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a checkpoint's metadata (a JSON object); remove {ckpt_dir}")
    edited = META_DIGEST in meta and meta[META_DIGEST] != meta_digest(meta)  # older checkpoints have no digest
    step = _STEP_DIR.match(Path(ckpt_dir).name)
    if edited or (step and meta.get("step") != int(step.group(1))):
        raise ValueError(f"checkpoint {ckpt_dir} is corrupted: {META} was changed after it was written (its fields "
                         f"do not match its digest or its folder's step); it was not loaded: {RESTORE}")
    return meta


def meta_digest(meta: dict) -> str:
    """The sha256 of meta.json's own fields (all but this digest), so that an edited field a loader trusts (the
    step, the model's shape) is found as corruption, not trusted."""
    body = {k: v for k, v in meta.items() if k != META_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def verify(ckpt_dir, meta: dict) -> None:
    """Check every file of a checkpoint against the sha256 written with it (meta.json's own fields: read_meta);
    ValueError naming the first damaged or missing file. A corrupted checkpoint is never loaded (and so never
    trained on or overwritten)."""
    ckpt_dir = Path(ckpt_dir)
    expected = meta.get("sha256")
    if not isinstance(expected, dict) or not expected:
        raise ValueError(f"{ckpt_dir / META} has no checksums: not a complete checkpoint of this version; remove it")
    for name in expected:
        if not plain_file_name(name):
            raise refused(ckpt_dir / META, f"it lists the file {name!r}, which is not a file inside the "
                          "checkpoint folder (train.py lists only its own files, by name)")
    if DCP_METADATA not in expected:
        raise refused(ckpt_dir / META, f"it has no checksum for {DCP_METADATA}, which train.py always lists")
    world = dist.get_world_size() if _distributed() else 1
    present = [name for name in expected if (ckpt_dir / name).is_file()]
    missing = sorted(set(expected) - set(present))
    actual = _checksums(ckpt_dir, present, world)
    damaged = missing + sorted(name for name in present if actual[name] != expected[name])
    if damaged:
        how = "missing" if damaged[0] in missing else "damaged (sha256 mismatch)"
        more = f" (and {len(damaged) - 1} more files)" if len(damaged) > 1 else ""
        raise ValueError(f"checkpoint {ckpt_dir} is corrupted: {damaged[0]} is {how}{more}; it was not loaded: "
                         f"{RESTORE}")


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


def _cause_in(err, kind=OSError):
    """The exception of type `kind` (an OSError: a full disk, a permission) behind one DCP wrapped, or None."""
    seen = [err]
    while seen:
        e = seen.pop()
        if isinstance(e, kind):
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
    except (Exception, CheckpointException) as err:  # DCP wraps the cause (ENOSPC...): surface it plainly
        cause = _cause_in(err, OSError)
        # torch's file writer reports a full disk as a RuntimeError ("unexpected pos"), not an OSError
        if cause is None and shutil.disk_usage(tmp.parent).free < FULL_DISK_BYTES:
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if cause is None:
            raise
        if rank == 0 and cause.errno == errno.ENOSPC:  # the unfinished save's files would keep the disk full
            shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(cause.errno, f"writing checkpoint {tmp}: {cause.strerror}") from None
    if distributed:
        dist.barrier()  # every shard is on disk
    checksums = _checksums(tmp, [p.name for p in tmp.iterdir()], world)
    if rank == 0:
        body = {**meta, "step": step, "sha256": checksums}
        files.write_text_atomically(tmp / META, json.dumps({**body, META_DIGEST: meta_digest(body)}, indent=1) + "\n")
        files.fsync_dir(tmp)
        if (final / META).is_file():  # the same step saved twice (a stop signal right after a periodic save):
            shutil.rmtree(tmp)  # the same state, already complete on disk; replacing it would open a gap
        else:
            os.replace(tmp, final)
        files.fsync_dir(final.parent)
        for old in final.parent.iterdir():  # older checkpoints and stale temporaries
            if old != final and (old.name.endswith(".tmp") or (_STEP_DIR.match(old.name) and (old / META).is_file())):
                if not old.name.endswith(".tmp"):  # renamed first: a kill mid-delete leaves a .tmp, never damage
                    old = old.rename(old.with_name(old.name + ".old.tmp"))
                shutil.rmtree(old, ignore_errors=True)
    if distributed:
        dist.barrier()
    return final


# ---------------------------------------------------------------------------- reading safely
class RefusedCheckpoint(ValueError):
    """A checkpoint file that holds what train.py never writes (Python objects beyond DCP's metadata classes and
    plain values, a file name outside the checkpoint folder): refused before anything in it is used. Built by
    `refused`; its only argument is the message, so that DCP can pass it between processes (it pickles errors)."""


def refused(path, why: str) -> RefusedCheckpoint:
    """The refusal of the file at `path`, saying why and that train.py did not write it."""
    return RefusedCheckpoint(f"{path}: refused to load: {why}; {NOT_OURS}")


def plain_file_name(name) -> bool:
    """Whether `name` is the name of a file directly inside a folder (not absolute, no separator, no `..`)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and os.sep not in name \
        and "\0" not in name


# The globals a DCP .metadata pickle refers to: DCP's own metadata classes, torch.Size, dtypes and layouts (by
# name), and the path of the checkpoint as saved. Each only builds a plain record; nothing else is importable.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "ChunkStorageMetadata",
                                              "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath"},
    "pathlib._local": {"PosixPath", "PurePosixPath"},  # where Python >= 3.13 defines them
}


class _ForeignGlobal(Exception):
    """A global outside _METADATA_GLOBALS, named "module.name"."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name in _METADATA_GLOBALS.get(module, ()) or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise _ForeignGlobal(f"{module}.{name}")


def read_dcp_metadata(path, files: set | None = None) -> dcp_metadata.Metadata:
    """DCP's Metadata from the `.metadata` pickle at `path`, unpickled with only DCP's metadata classes importable;
    every data file it points to must be a plain name (and in `files` when given: those meta.json checksums).
    RefusedCheckpoint for anything else; OSError when the file cannot be read."""
    with open(path, "rb") as f:
        try:
            metadata = _MetadataUnpickler(f).load()
        except _ForeignGlobal as err:
            raise refused(path, f"{FOREIGN_OBJECTS} ({err})") from None
        except Exception as err:  # a truncated or garbled pickle, a dtype or layout that does not exist
            raise refused(path, f"it is not DCP metadata ({type(err).__name__}: {err})") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise refused(path, f"it holds a {type(metadata).__name__}, not DCP metadata")
    storage = metadata.storage_data
    if not isinstance(storage, dict) or not isinstance(metadata.state_dict_metadata, dict):
        raise refused(path, "its index of items is not a dict")
    for index, info in storage.items():
        if not isinstance(index, dcp_metadata.MetadataIndex) or not isinstance(info, _StorageInfo):
            raise refused(path, "its index of items holds something other than DCP's records")
        name = info.relative_path
        if not plain_file_name(name) or (files is not None and name not in files):
            raise refused(path, f"item {index.fqn} points to the file {name!r}, which is not one of the "
                          "checkpoint's own files (those listed with a checksum in meta.json)")
    return metadata


def _culprit(err) -> str:
    """The global torch's weights_only unpickler refused ("posix.system"), else the error's first line."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else (str(err).splitlines() or [type(err).__name__])[0][:200]


def _load_plain(stream, path, fqn):
    """A non-tensor item (a float, a tuple, None, a list of names) by torch.load(weights_only=True); RefusedCheckpoint
    naming `path` (the shard it is in) when it holds anything else."""
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as err:
        raise refused(path, f"its item {fqn} {FOREIGN_OBJECTS.removeprefix('it ')} ({_culprit(err)})") from None


class SafeReader(dcp.FileSystemReader):
    """DCP's FileSystemReader, with `.metadata` read by read_dcp_metadata (once: DCP gets what was checked)."""

    def __init__(self, path, files: set | None = None):
        super().__init__(str(path))
        self._files, self._read = files, {}

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        rank = kwargs.get("rank")
        if rank not in self._read:
            self._read[rank] = read_dcp_metadata(self._get_metadata_path(rank), self._files)
        metadata = self._read[rank]
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def check_plain_items(self) -> None:
        """Read every non-tensor item with torch.load(weights_only=True) now, those a caller does not ask for too
        (eval.py and export.py ask for the weights only): a checkpoint holding foreign objects is refused whole."""
        metadata = self.read_metadata()
        plain = {fqn for fqn, md in metadata.state_dict_metadata.items()
                 if isinstance(md, dcp_metadata.BytesStorageMetadata)}
        by_file = {}
        for index, info in metadata.storage_data.items():
            if index.fqn in plain:
                by_file.setdefault(info.relative_path, []).append((index.fqn, info))
        for name, items in by_file.items():
            path = Path(self.path) / name
            with open(path, "rb") as f:
                for fqn, info in items:
                    f.seek(info.offset)
                    raw = self.transforms.transform_load_stream(None, info.transform_descriptors or (),
                                                                io.BytesIO(f.read(info.length)))
                    _load_plain(io.BytesIO(raw.read()), path, fqn)


class SafeLoadPlanner(dcp.DefaultLoadPlanner):
    """DCP's DefaultLoadPlanner, but a non-tensor item (the optimizer's lr, betas, flags, parameter names) is read
    with torch.load(weights_only=True): plain values only, never an object that runs code."""

    def __init__(self, ckpt_dir):
        super().__init__()
        self._ckpt_dir = Path(ckpt_dir)

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        info = self.metadata.storage_data.get(read_item.storage_index)
        loaded = _load_plain(value, self._ckpt_dir / (info.relative_path if info is not None else DCP_METADATA), fqn)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded


# ---------------------------------------------------------------------------- reading
def training_state(container, optimizer) -> dict:
    """The DCP state of a training run: the (sharded) model + projector and the optimizer state, and the RNG."""
    model_state, optimizer_state = get_state_dict(container, optimizer)
    return {"model": model_state, "optimizer": optimizer_state, "rng": torch.get_rng_state()}


def restore(ckpt_dir, container, optimizer) -> None:
    """Load a verified checkpoint into a training run (any world size: DCP reshards) and its RNG."""
    state = training_state(container, optimizer)
    load(ckpt_dir, state)
    set_state_dict(container, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    torch.set_rng_state(state["rng"])


def load(ckpt_dir, state: dict) -> None:
    """Fill `state` (a DCP state dict of the same keys, any sharding) in place from a verified checkpoint;
    RefusedCheckpoint (a ValueError naming the file) for one that holds what train.py never writes."""
    meta = read_meta(ckpt_dir)
    verify(ckpt_dir, meta)
    reader = SafeReader(ckpt_dir, files=set(meta["sha256"]))
    reader.check_plain_items()  # refused here, as a plain error, before DCP starts
    try:
        with _single_process_is_fine():
            dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(ckpt_dir), no_dist=not _distributed())
    except (Exception, CheckpointException) as err:  # DCP wraps what a planner raises: surface a refusal plainly
        refusal = _cause_in(err, RefusedCheckpoint)
        if refusal is not None:
            raise refusal from None
        gone = _cause_in(err, FileNotFoundError)  # a shard deleted while it was read (a run still saving)
        if gone is None:
            raise
        raise FileNotFoundError(gone.errno, f"reading checkpoint {ckpt_dir}: {gone.strerror}", gone.filename) from None


def saved_keys(ckpt_dir) -> list[str]:
    """The names of everything a checkpoint holds ("model.gpt.embed.weight", "model.projector.w_up.weight", ...)."""
    return sorted(read_dcp_metadata(Path(ckpt_dir) / DCP_METADATA).state_dict_metadata)


class RunStillSaving(FileNotFoundError):
    """Every checkpoint `load_newest` picked was deleted while it was read: the run is saving one after another."""


def load_model(path, map_location="cpu"):
    """(GPT, meta) from a run directory or a checkpoint directory written by train.py: the model's weights
    only (no projector, no optimizer), read from DCP's shards into one process (`load_newest`)."""
    model, meta, _ = load_newest(path, map_location)
    return model, meta


def load_newest(path, map_location="cpu"):
    """(GPT, meta, the checkpoint directory read) of a run directory's newest complete checkpoint, or of a checkpoint
    directory. A run still training deletes each checkpoint once the next one is complete, maybe while this reads
    it: then the newest one is read instead, RELOADS tries in all, and RunStillSaving (one line) after that."""
    for _ in range(RELOADS):
        ckpt_dir = latest(path)
        if ckpt_dir is None:
            raise FileNotFoundError(f"no complete checkpoint in {path}: train one with `python train.py "
                                    f"--out_dir=DIR` (it writes DIR/{CHECKPOINTS}/step_N/) or pass the right run "
                                    "directory")
        try:
            return (*_load_model_from(ckpt_dir, map_location), ckpt_dir)
        except (Exception, CheckpointException):
            if ckpt_dir == Path(path) and not ckpt_dir.is_dir():
                raise FileNotFoundError(f"checkpoint {ckpt_dir} was deleted while it was read (its run saved a newer "
                                        "one); read the run's folder instead") from None
            # replaced by a newer checkpoint while it was read: try that one; else the error is the checkpoint's own
            if ckpt_dir == Path(path) or latest(path) == ckpt_dir:
                raise
    raise RunStillSaving(f"the run in {path} is writing checkpoints faster than they can be read (each of the "
                         f"{RELOADS} tried was replaced by the next while it was read); retry, or wait until it has "
                         "saved its last one")


def _load_model_from(ckpt_dir, map_location):
    meta = read_meta(ckpt_dir)
    if "model_config" not in meta:
        raise ValueError(f"{ckpt_dir / META} has no model_config: not a checkpoint written by train.py")
    model = model_lib.GPT(model_lib.GPTConfig.from_dict(meta["model_config"]))
    weights = {f"{MODEL_KEY}.{key}": value for key, value in model.state_dict().items()}
    load(ckpt_dir, {"model": weights})
    return model.to(map_location), meta
