"""runtime.py: what the scripts share: `--key=value` flags, the device, CPU speed settings, the process
group, the global gradient norm and the stop signals.

train.py, sample.py, bench.py and compare.py read their options the same way: every field of a config dataclass
is a `--field=value` flag (or `--field value`, as argparse takes it; a bare `--flag` means true, `none` means None
for an optional field); an unknown key or a value of the wrong type is a ValueError naming the key and what it
expects. The commands built on argparse take support/cli.py's parser (one-line errors; no torch there).
The device is resolved here once: `auto | cpu | cuda | cuda:N` on one process, `cuda:LOCAL_RANK` for every
rank under torchrun. On CPU, two settings matter more than any code change (docs/method.md, "CPU speed traps"): flushing
denormals and keeping glibc from returning big buffers to the OS after every step.

Imports torch, the standard library and support/files.py. Nothing runs at import.
"""

import contextlib
import ctypes
import dataclasses
import os
import signal
import sys
import threading
import types
import typing
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from support import files

TRUE_WORDS, FALSE_WORDS = ("true", "1"), ("false", "0")


# ---------------------------------------------------------------------------- flags
def coerce_value(key, value, hint, from_cli: bool):
    """`value` as field `key` of type `hint` (int, float, bool, str, dict or X | None); ValueError naming both.
    from_cli: a string typed on the command line; else a typed value from a TOML / JSON file."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    bad = ValueError(f"config key {key!r} expects {base.__name__}{' or none' if optional else ''}, got {value!r}")
    if from_cli:
        if optional and value.lower() in ("none", "null"):
            return None
        if base is bool:
            if value.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError(f"config key {key!r} expects a bool (true/false/1/0), got {value!r}")
            return value.lower() in TRUE_WORDS
        try:
            return base(value)
        except (ValueError, TypeError):
            raise bad from None
    if value is None and optional:
        return None
    if base is bool and type(value) is int and value in (0, 1):
        return bool(value)
    if base is float and type(value) is int:
        return float(value)
    if type(value) is not base:
        raise bad
    return value


def split_flags(argv, positional: list | None = None) -> list[tuple[str, str, str]]:
    """[(key, value, the flag as `--key=value`)] of the arguments, in order. A flag is `--key=value` or, as argparse
    takes it, `--key value`: a `--key` without "=" takes the next argument as its value unless that one starts
    with "--" (then it is the next flag, and a bare `--flag` gives "true"). Any other argument is appended to
    `positional` when a list is given (sample.py's run folder), else a ValueError."""
    flags, argv, i = [], list(argv), 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if not arg.startswith("--"):
            if positional is None:
                raise ValueError(f"unknown option {arg!r}: expected --key=value")
            positional.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq and i < len(argv) and not argv[i].startswith("--"):  # `--key value`
            value, eq, arg, i = argv[i], "=", f"{arg}={argv[i]}", i + 1
        flags.append((key, value if eq else "true", arg))
    return flags


def wants_help(argv) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def flag_help(cls, skip=()) -> list[str]:
    """One `--field=default` line per field of dataclass `cls`, for --help."""
    return [f"  --{f.name}={f.default!r}" for f in dataclasses.fields(cls) if f.name not in skip]


def parse_flags(argv, cls, program: str, positional: list | None = None):
    """An instance of dataclass `cls` from `--field=value` (or `--field value`) flags; ValueError for an unknown or
    mistyped one. `positional`: split_flags' list for the other arguments."""
    hints = typing.get_type_hints(cls)
    values = {}
    for key, text, arg in split_flags(argv, positional):
        if key not in hints:
            raise ValueError(f"unknown option {arg!r}; {program} takes --key=value with key in: {', '.join(hints)}")
        values[key] = coerce_value(key, text, hints[key], from_cli=True)
    return cls(**values)


# ---------------------------------------------------------------------------- device
def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1


def resolve_device(spec: str = "auto") -> torch.device:
    """The device of this process: `auto` (CUDA if there is one, else CPU), `cpu`, `cuda`, `cuda:N`.

    Under torchrun with several processes, every rank takes cuda:LOCAL_RANK; an explicit index there would
    put every rank on one GPU, so it is refused. A CUDA device without CUDA is refused with the fix."""
    if not isinstance(spec, str) or not (spec in ("auto", "cpu", "cuda") or
                                         (spec.startswith("cuda:") and spec[5:].isdigit())):
        raise ValueError(f"device={spec!r} is not a device; use auto, cpu, cuda or cuda:N (N a GPU index)")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} but this machine has no usable CUDA GPU (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda is not None}); use --device=cpu or --device=auto")
    if launched_by_torchrun():
        if spec != "cuda":
            raise ValueError(f"device={spec!r} under torchrun: each rank uses cuda:LOCAL_RANK, so a fixed index would "
                             "put every rank on one GPU; pass --device=cuda (or auto), and choose the GPUs with "
                             "CUDA_VISIBLE_DEVICES")
        index = int(os.environ["LOCAL_RANK"])
    else:
        index = int(spec[5:]) if spec.startswith("cuda:") else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"device cuda:{index} does not exist: this machine has {torch.cuda.device_count()} visible "
                         "GPU(s); pick an index below that (or fewer processes per node)")
    return torch.device("cuda", index)


def setup_device(device: torch.device, cpu_malloc_tuning: bool = True) -> None:
    """Speed settings for `device`: on CUDA select it (by index: a bare "cuda" is an error for set_device)
    and allow TF32; on CPU flush denormals and tune glibc's malloc."""
    if device.type == "cuda":
        torch.cuda.set_device(device.index)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_flush_denormal(True)  # denormals made CPU steps 5-20x slower
        if cpu_malloc_tuning:
            tune_cpu_malloc()


def tune_cpu_malloc():
    """glibc's malloc hands big tensors back to the OS each step and page-faults them in again (40% of a CPU
    step of the `small` preset). The MALLOC_*_ env vars that fix it are read only at process start, but
    mallopt() sets the same knobs at run time. mallopt takes a C int: -1 becomes SIZE_MAX (never mmap, never
    trim); 2**31 - 1 is not enough, as one step frees several logits-sized buffers of 400 MB. A no-op off
    glibc or when the user already chose (MALLOC_MMAP_THRESHOLD_ set, or tcmalloc through LD_PRELOAD)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # from glibc's malloc.h
    for param, value in ((m_mmap_threshold, -1), (m_trim_threshold, -1), (m_top_pad, 2**30)):
        libc.mallopt(param, value)


def adamw_options(device: torch.device) -> dict:
    """torch.optim.AdamW's implementation in train.py: the fused kernel on CPU and CUDA, plain tensors or FSDP2's
    DTensors. One pass over all tensors instead of a loop of ops per tensor (on CPU a third of the default's time
    for the `small` preset; it rounds differently from the loop), and the `found_inf` argument train.py's step
    relies on: the update of a non-finite step is skipped on the device, with no read of it on the host."""
    return {"fused": True}


# ---------------------------------------------------------------------------- processes
@dataclass
class Runtime:
    device: torch.device
    rank: int                   # this process's index among `world` (0 alone)
    world: int                  # processes in the job (torchrun's WORLD_SIZE; 1 alone)
    started_dist: bool          # whether start() opened the process group (and stop() must close it)
    host_group: object = None   # a gloo group over the same processes, for flags agreed on the host (any_rank)

    @property
    def master(self) -> bool:  # rank 0 writes logs, checkpoints' metadata and the progress line
        return self.rank == 0


def start(device_spec: str = "auto", cpu_malloc_tuning: bool = True) -> Runtime:
    """The device, the process group (torchrun's, or one of a single process; nccl on CUDA, gloo on CPU) and
    the speed settings."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = resolve_device(device_spec)
    setup_device(device, cpu_malloc_tuning)
    started_dist = not dist.is_initialized()
    if started_dist:  # alone too: FSDP2 and DCP take the same path for 1 process as for N
        backend, device_id = ("nccl", device) if device.type == "cuda" else ("gloo", None)
        if world > 1:
            dist.init_process_group(backend, device_id=device_id)  # torchrun's env:// rendezvous
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, device_id=device_id)
    host_group = dist.new_group(backend="gloo") if world > 1 and device.type == "cuda" else None
    return Runtime(device, rank, world, started_dist, host_group)


def stop(rt: Runtime) -> None:
    """Close the process group start() opened. On the normal path, meet at a barrier first (`barrier(rt)`):
    a rank that tore gloo down while rank 0 was still saving died with SIGABRT."""
    if rt.started_dist:
        dist.destroy_process_group()


def barrier(rt: Runtime) -> None:
    if rt.world > 1:
        dist.barrier()


def all_reduce(tensor, rt: Runtime, op=None) -> None:
    """Sum (or `op`) `tensor` over the processes, in place; nothing to do alone."""
    if rt.world > 1:
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)


def any_rank(flag: bool, rt: Runtime) -> bool:
    """Whether `flag` holds on any process: one all-reduce of a CPU tensor (gloo), so no device is read."""
    if rt.world == 1:
        return flag
    agreed = torch.tensor([float(flag)])
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=rt.host_group)
    return bool(agreed.item())


def to_device(batch, device):
    """A CPU batch on `device`. On CUDA through pinned memory, asynchronously: a copy from pageable memory would
    wait for all the work queued on the GPU (a host sync every step)."""
    return batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch.to(device)


def clip_grad_norm(params, max_norm, rt=None, multi_tensor=None):
    """Global L2 norm of the grads, clipped to max_norm if > 0. FSDP2's grads are DTensor shards: each process
    sums the squares of its own shard and one all-reduce over `rt` adds them up; DDP's are whole and the same on
    every rank (nothing to add). Summed one tensor at a time in a fixed
    order, so all-zero grads (the projector at nitp_weight=0) change neither the norm nor the clip, bit for bit;
    torch's stacked reduction regroups the other terms when the list grows. On CUDA, where one kernel per tensor
    makes the step wait on the host, the norms come from the multi-tensor kernel (_foreach_norm; `multi_tensor`
    None: on CUDA). Same clip as torch's: grads *= min(1, max_norm / (norm + 1e-6)), no read of the device."""
    sharded = any(isinstance(p.grad, DTensor) for p in params)
    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params if p.grad is not None]
    total_sq = torch.zeros((), device=grads[0].device)
    if grads[0].is_cuda if multi_tensor is None else multi_tensor:
        total_sq = torch.stack(torch._foreach_norm(grads, 2.0, dtype=torch.float32)).square().sum()
    else:
        for g in grads:
            total_sq = total_sq + torch.linalg.vector_norm(g, dtype=torch.float32) ** 2
    if rt is not None and sharded:
        all_reduce(total_sq, rt)
    total = total_sq.sqrt()
    if max_norm > 0:
        torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))
    return total



def unsharded(sharded, plain, device):
    """`plain` (a new module of the same kind) loaded with the weights of an FSDP2 module of one process."""
    state = sharded.state_dict()
    plain.load_state_dict({k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()})
    return plain.to(device)


# ---------------------------------------------------------------------------- one run per folder
LOCK_FILE = ".run.lock"


def lock_folder(folder):
    """An exclusive OS lock (flock) on folder/.run.lock, held while the returned file stays open: a second run
    into the same folder is refused at once, naming the process that holds it, and touches nothing. The kernel
    releases the lock when the process dies, so a killed run never leaves a stale one."""
    return files.take_lock(os.path.join(folder, LOCK_FILE), _in_use(folder))


def remove_lock_folder(folder) -> None:
    """Remove `folder` if it holds nothing but a released lock file (what a run refused at startup leaves)."""
    with contextlib.suppress(OSError):
        if os.listdir(folder) == [LOCK_FILE]:
            os.remove(os.path.join(folder, LOCK_FILE))
            os.rmdir(folder)


def check_lock_free(folder) -> None:
    """ValueError if a run holds `folder`'s lock; creates nothing (a folder or lock file that does not exist is
    held by no one). Lets a caller name a folder in use before it names anything else wrong with it."""
    if os.path.isfile(os.path.join(folder, LOCK_FILE)):
        try:
            files.take_lock(os.path.join(folder, LOCK_FILE), _in_use(folder)).close()  # released on close
        except OSError:  # an unwritable folder: check_out_dir names it
            return


def _in_use(folder) -> str:
    return f"--out_dir={folder} is in use by another run ({{holder}}); wait for it to end or pass another --out_dir"


# ---------------------------------------------------------------------------- signals
@contextlib.contextmanager
def stop_signals_call(handler):
    """Within it, SIGINT and SIGTERM call handler(signum, frame); the old handlers come back on exit. Signals can
    be handled only in the main thread: elsewhere nothing changes."""
    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        yield
    finally:
        for s, previous in old.items():
            signal.signal(s, previous)


@contextlib.contextmanager
def graceful_stop():
    """SIGINT / SIGTERM set `stop.requested`: the loop saves at the end of the step and returns cleanly; a
    second signal aborts at once (exit 128 + N, one line: a save it cuts short stays a .tmp folder, which the
    next save removes, so the previous checkpoint is the one to resume). Installed only from the main thread; the
    old handlers come back on exit."""
    stop = threading.Event()
    stop.signum = None

    def on_signal(signum, frame):
        if stop.is_set():
            print(f"signal {signum} again: stopped at once, without saving; --resume=true continues from the last "
                  "complete checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stop.set()
        stop.signum = signum
        print(f"\nsignal {signum}: saving a checkpoint after this step, then stopping", flush=True)

    with stop_signals_call(on_signal):
        yield stop


def die_with_parent() -> None:
    """In a child process before it starts (Popen's preexec_fn): the kernel sends it SIGTERM when its parent
    dies, however the parent dies (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def forward_signals(proc):
    """SIGINT / SIGTERM to this process are passed on to the child `proc` (which saves and stops) instead of
    stopping us first; the old handlers come back on exit. Only from the main thread."""
    def forward(signum, frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    with stop_signals_call(forward):
        yield proc
