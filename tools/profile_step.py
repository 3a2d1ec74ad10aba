"""tools/profile_step.py: where the time of a training step and of an MoE layer goes (torch.profiler).

    python tools/profile_step.py                                  # CPU: preset small, fp32, about a minute
    python tools/profile_step.py --preset=gpt2-124m --batch_size=64 --compile --moe_preset=9bA1b  # one GPU
    python tools/profile_step.py ... --out=runs/profile.txt       # the report to a file as well

Profile before guessing: the questions the GPU figures of docs/performance.md leave open, in one run.
  * Is the step bound by the host? bench.py's NITP training step (the model, loss, clip and fused AdamW built from
    the pieces train.py uses) is timed three ways a step: wall time (synchronised), host time (until the Python
    call returns: the work is queued, not waited for) and, on a GPU, device-busy time (the union of its kernels'
    intervals in the profile). Host close to wall with busy well under it: the GPU waits for the host.
  * Which ops take the time: the step's top ops by self device time (self CPU time on a CPU).
  * Where the MoE layer's time goes against a dense SwiGLU of the same active FLOPs (bench.py's pair): the same
    figures and table for each, so routing, the sort, the gathers and scatters and the grouped matmuls show up
    by name beside the dense layer's matmuls.
The unprofiled timings come first (the profiler adds its own host work), then one profiled pass of as many calls.
Every bench.py flag is one here too (`--rounds`: the calls timed, then profiled), plus --top and --out. Nothing
runs at import.
"""

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as tools/NAME.py: the core is one level up
from config import ObjectiveConfig
from support import files, flops, runtime
from tools import bench


# ---------------------------------------------------------------------------- configuration
@dataclass
class ProfileConfig(bench.BenchConfig):
    """bench.py's flags (preset, device, dtype, shapes, compile, MoE layer, threads), read for one profile: `rounds`
    timed calls of each part after `warmup`, then as many profiled ones; --json prints the figures only."""
    rounds: int = 5                     # timed calls of each part, then as many profiled ones
    top: int = 15                       # rows of each op table
    out: str | None = None              # also write the report to this file


def resolve(cfg: ProfileConfig):
    """(cfg with bench.py's defaults filled in, the preset's GPTConfig); ValueError naming a bad value. The step's
    loss head computes full logits (ce_chunk 0, train.py's choice up to a 65,536-token vocabulary) unless --ce_chunk
    is given."""
    if cfg.top < 1:
        raise ValueError(f"top={cfg.top} must be at least 1")
    if cfg.out is not None and Path(cfg.out).is_dir():
        raise ValueError(f"--out={cfg.out} is a folder; name the file to write, e.g. {Path(cfg.out) / 'profile.txt'}")
    if cfg.out is not None and not Path(cfg.out).absolute().parent.is_dir():
        raise ValueError(f"--out={cfg.out}: its folder {Path(cfg.out).absolute().parent} does not exist; create it or "
                         "name a file in an existing folder")
    return bench.resolve(dataclasses.replace(cfg, ce_chunk=cfg.ce_chunk or 0))


# ---------------------------------------------------------------------------- measuring
def busy_seconds(events) -> float:
    """The device's busy time: the union of its kernels' intervals (user annotations such as Optimizer.step
    span kernels and would count their time twice)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation)
    busy, end = 0.0, float("-inf")
    for start, stop in spans:
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return busy / 1e6  # microseconds


def profile(name: str, fn, cfg: ProfileConfig, device) -> tuple[dict, str]:
    """({wall_ms, host_ms, busy_ms}, the report's lines) for `fn` (one call = one step or one layer pass)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(cfg.warmup):
        fn()
    sync()
    wall, host = [], []
    for _ in range(cfg.rounds):
        start = time.perf_counter()
        fn()
        returned = time.perf_counter()
        sync()
        host.append(returned - start)
        wall.append(time.perf_counter() - start)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(cfg.rounds):
            fn()
        sync()
    wall_ms, host_ms = (1e3 * sorted(t)[len(t) // 2] for t in (wall, host))  # medians
    busy_ms = 1e3 * busy_seconds(prof.events()) / cfg.rounds if cuda else None
    figures = f"wall {wall_ms:.1f} ms, host {host_ms:.1f} ms ({host_ms / wall_ms:.0%} of wall)"
    if busy_ms is not None:
        figures += f", device busy {busy_ms:.1f} ms ({busy_ms / wall_ms:.0%} of wall)"
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=cfg.top, max_name_column_width=60)
    lines = [f"===== {name}: {figures} a call (medians of {cfg.rounds}; table: {cfg.rounds} profiled calls, by "
             f"{sort_by})", table]
    return {"wall_ms": wall_ms, "host_ms": host_ms, "busy_ms": busy_ms}, "\n".join(lines)


def run_profile(cfg: ProfileConfig) -> tuple[dict, str]:
    """Profile as configured -> ({part: figures}, the report). The step's figures add its MFU on a GPU (the FLOPs
    of bench.py's count over the wall time, against the bf16 peak)."""
    cfg, mcfg = resolve(cfg)
    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    runtime.setup_device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    header = (f"profile_step.py: preset {cfg.preset}, {device}, {cfg.dtype}, batch {cfg.batch_size} x {cfg.seq_len}, "
              f"{'compiled' if cfg.compile else 'eager'}, torch {torch.__version__}"
              + (f", {torch.cuda.get_device_name(device)}" if cuda else ""))
    figures, report = {}, [header]
    with bench.cpu_threads(0 if cuda else cfg.threads):
        step = bench.training_steps(cfg, mcfg, device, autocast, ce_chunk=cfg.ce_chunk, names=("nitp",))["nitp"]
        figures["nitp_step"], text = profile("NITP training step", step, cfg, device)
        del step
        cost = flops.flops_per_token(mcfg, cfg.seq_len, **flops.aux_flops_kwargs(
            ObjectiveConfig(projector_hidden=cfg.projector_hidden), mcfg))
        peak = cfg.peak_flops or flops.peak_bf16_flops(device)
        tokens_per_s = cfg.batch_size * cfg.seq_len / (figures["nitp_step"]["wall_ms"] / 1e3)
        figures["nitp_step"]["mfu"] = tokens_per_s * (cost["ntp"] + cost["aux_extra"]) / peak if cuda and peak else None
        if figures["nitp_step"]["mfu"] is not None:
            header += f"; the step's MFU {figures['nitp_step']['mfu']:.1%} (bf16 peak {peak / 1e12:.0f} TFLOP/s)"
        report = [header, text]
        layers, about, path = bench.moe_and_dense_layers(cfg, device, autocast)
        report.append(f"MoE against dense: {about}; {path}; {cfg.layer_tokens} tokens, forward + backward")
        for name, fn in layers.items():
            figures[f"{name}_layer"], text = profile(f"{name} layer", fn, cfg, device)
            report.append(text)
    return figures, "\n\n".join(report)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if runtime.wants_help(argv):
        print(__doc__, *runtime.flag_help(ProfileConfig), sep="\n")
        return 0
    try:
        cfg = runtime.parse_flags(argv, ProfileConfig, "profile_step.py")
        figures, report = run_profile(cfg)
    except ValueError as err:  # a bad flag or value; the message names it and the fix
        print(f"profile_step.py: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(figures) if cfg.json else report, flush=True)
    if cfg.out is not None:
        files.write_text_atomically(cfg.out, report + "\n")
        print(f"wrote {cfg.out}", file=sys.stderr if cfg.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
