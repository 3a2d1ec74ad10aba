"""tools/bench_parallel.py: the step time of DDP against FSDP2 over the same processes, train.py as a user runs it.

    python tools/bench_parallel.py                          # small preset, 2 gloo processes on CPU, a few minutes
    python tools/bench_parallel.py --nproc=8 --preset=gpt2-124m --device=cuda -- --compile=true   # a GPU node

Each round launches `torchrun --standalone --nproc_per_node=NPROC train.py --data_parallel=MODE` for ddp, then
fsdp (the order flips every round, so drift on a shared machine hits both alike), into a fresh folder, and reads
the training clock rank 0 logs per step (log.jsonl's elapsed_s; evaluation and checkpoints are not on it). A
mode's figure is the median step time over the rounds' steps after the first WARMUP of each run. Flags after
`--` go to train.py as they are. Prints a table; --json prints one JSON object instead. Standard library only:
everything else runs in the subprocesses.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as tools/NAME.py: the core is one level up
from support import cli

REPO = Path(__file__).resolve().parents[1]
MODES = ("ddp", "fsdp")


def step_times(out_dir, warmup: int) -> list[float]:
    """Seconds per training step from log.jsonl's cumulative elapsed_s (log_interval=1), after `warmup` steps."""
    records = [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in records if r["kind"] == "train"]
    return [b - a for a, b in zip([0.0, *elapsed], elapsed)][warmup:]


def launch(mode, args, out_dir) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               str(REPO / "train.py"), f"--preset={args.preset}", f"--device={args.device}", f"--data_parallel={mode}",
               f"--max_steps={args.steps}", "--log_interval=1", "--eval_batches=0", "--ckpt_interval=0",
               f"--out_dir={out_dir}", *args.train_flags]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:  # torchrun prefixes its ranks' lines with "[rankN]:" and ends with its own banner
        lines = [line.split("]:", 1)[-1].strip() if line.startswith("[rank") else line.strip()
                 for line in (proc.stderr + "\n" + proc.stdout).splitlines()]
        refused = next((line for line in lines if line.startswith("train.py: error: ")), None)
        if refused is not None:  # bad input (a preset, a flag): train.py's own one line
            raise ValueError(f"{refused.removeprefix('train.py: error: ')} (in train.py --data_parallel={mode})")
        tail = [line for line in lines if line.strip("=-_ ")][-1:] or ["(no output)"]
        raise RuntimeError(f"train.py --data_parallel={mode} failed (exit {proc.returncode}): {tail[0]}")


def bench(args) -> dict:
    times = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench_parallel_") as scratch:
        for r in range(args.rounds):
            for mode in MODES[::1 if r % 2 == 0 else -1]:
                out_dir = Path(scratch) / f"{mode}_{r}"
                print(f"[bench_parallel] round {r + 1}/{args.rounds}: {mode}", file=sys.stderr, flush=True)
                launch(mode, args, out_dir)
                times[mode] += step_times(out_dir, args.warmup)
                shutil.rmtree(out_dir)  # a checkpoint of the small preset per run would add up
    median = {mode: statistics.median(t) for mode, t in times.items()}
    return {"preset": args.preset, "device": args.device, "nproc": args.nproc, "steps_timed": len(times["ddp"]),
            "step_s": median, "ddp_over_fsdp": median["ddp"] / median["fsdp"], "train_flags": args.train_flags}


def main(argv=None) -> int:
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU a process)")
    parser.add_argument("--nproc", type=int, default=2, help="processes (torchrun --nproc_per_node)")
    parser.add_argument("--steps", type=int, default=10, help="training steps a run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps of every run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode, interleaved")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the table")
    parser.add_argument("train_flags", nargs="*", help="after --: more train.py flags, e.g. --compile=true")
    args = parser.parse_args(argv)
    if args.nproc < 2 or args.rounds < 1 or not 0 <= args.warmup < args.steps:
        parser.error("--nproc must be at least 2, --rounds at least 1, and 0 <= --warmup < --steps")
    try:
        result = bench(args)
    except ValueError as err:
        print(f"bench_parallel.py: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"bench_parallel.py: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.preset} on {args.nproc} x {args.device}, median step over {result['steps_timed']} steps a mode")
    for mode, seconds in result["step_s"].items():
        print(f"  {mode:<5} {seconds * 1e3:9.1f} ms")
    print(f"  ddp / fsdp  {result['ddp_over_fsdp']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
