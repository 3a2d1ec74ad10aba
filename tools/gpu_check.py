"""tools/gpu_check.py: the GPU acceptance run, one command, about 5 minutes on one H100.

    python tools/gpu_check.py                    # every visible GPU; writes runs/gpu_check/report.json
    python tools/gpu_check.py --quick            # fewer steps and rounds (a smoke test)
    python tools/gpu_check.py --out_dir=DIR      # report.json and gpu_check.log (every command's output) in DIR

What a CPU machine cannot show, each step a separate process as a user would run it, most important first:
  1. train.py, 1 GPU, gpt2-124m with NITP on the embedded corpus, bf16 autocast, eager: final loss, tokens/s,
     MFU, peak memory;
  2. torchrun on every visible GPU with DDP and with FSDP2 (nccl; one GPU: one process, no wrapper), a DCP
     checkpoint, then --resume=true to more steps under the other wrapper;
  3. the same training run with --compile=true (the whole model, one process), and at batch 64 x 1024: the MFU,
     then the memory it saves and the time it costs with activation checkpointing;
  4. the CUDA tests of the suite (`pytest -m cuda`): the grouped-GEMM MoE path against the expert loop on the
     GPU, bench.py's CUDA figures;
  5. bench.py --preset=gpt2-124m --moe_preset=9bA1b: NITP's and its peers' step-time overheads against their
     FLOPs floors, MFU, the chunked loss head's memory, and the grouped-GEMM MoE layer (9bA1b's) against a dense
     layer of the same active FLOPs;
  6. tools/profile_step.py at the MFU run's shape (gpt2-124m, batch 64 x 1024, compiled) with 9bA1b's MoE layer:
     the step's wall, host and device-busy time (is it bound by the host?) and where the MoE layer's time goes
     against the dense one, op by op (profile.txt).
The report is rewritten after every step, so a run cut short keeps what it finished. It prints one table of
pass/fail and figures. Imports only the standard library; everything else runs in the subprocesses.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(name, command, timeout, log):
    """Run `command` in the repo, its output appended to `log`; (passed, seconds, stdout + stderr)."""
    print(f"[gpu_check] {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        ok, text = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        out = [s.decode() if isinstance(s, bytes) else (s or "") for s in (err.stdout, err.stderr)]
        ok, text = False, f"timed out after {timeout} s\n{''.join(out)}"
    seconds = time.perf_counter() - start
    with open(log, "a") as f:
        f.write(f"\n===== {name} ({seconds:.0f} s, {'ok' if ok else 'FAILED'}): {' '.join(command)}\n{text}")
    print(f"[gpu_check] {name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
    if not ok:
        print(text[-3000:], flush=True)
    return ok, seconds, text


def last_train_line(out_dir) -> dict:
    log = out_dir / "log.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return next((r for r in reversed(lines) if r.get("kind") == "train"), {})


def gpu_count() -> int:
    text = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                          capture_output=True, text=True).stdout.strip()
    return int(text or 0)


def write_report(out, gpus, rows):
    (out / "report.json").write_text(json.dumps({"gpus": gpus, "rows": rows}, indent=1) + "\n")


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    quick = "--quick" in args
    out = Path(next((a.split("=", 1)[1] for a in args if a.startswith("--out_dir=")), REPO / "runs" / "gpu_check"))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    gpus = gpu_count()
    if gpus == 0:
        print("gpu_check: no CUDA GPU visible; run this on a GPU machine", file=sys.stderr)
        return 2
    python, steps = sys.executable, 10 if quick else 30
    common = ["--preset=gpt2-124m", "--objective=nitp", "--device=cuda", "--seq_len=1024", "--batch_size=16",
              "--global_batch_tokens=16384", "--warmup_steps=5", "--eval_interval=0", "--eval_batches=2",
              f"--max_steps={steps}", f"--log_interval={max(1, steps // 3)}", "--ckpt_interval=0"]
    rows = []

    def train_row(label, run_dir, ok, seconds, want_step, **extra):
        last = last_train_line(run_dir)
        rows.append({"check": label, "pass": ok and last.get("step") == want_step, "seconds": seconds,
                     "loss": last.get("loss"), "tokens_per_s": last.get("tokens_per_s"), "mfu": last.get("mfu"),
                     "peak_mem_gib": last.get("peak_mem_gib"), **extra})
        write_report(out, gpus, rows)

    run_dir = out / "eager"
    ok, seconds, _ = run("train 1 GPU eager", [python, "train.py", *common, f"--out_dir={run_dir}"], 150, log)
    train_row("train.py 1 GPU, bf16, eager", run_dir, ok, seconds, steps)

    # DDP and FSDP2 over every GPU (nccl), a DCP checkpoint, resumed under the other wrapper; one GPU: no wrapper
    modes = ("ddp", "fsdp") if gpus > 1 else ("none",)
    launch = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "train.py", *common,
              "--batch_size=2", f"--global_batch_tokens={2 * 2 * 1024 * gpus}", "--decay_frac=0"]
    for mode, other in zip(modes, modes[::-1]):
        run_dir, flag = out / f"torchrun_{mode}", [] if mode == "none" else [f"--data_parallel={mode}"]
        ok, seconds, _ = run(f"torchrun {gpus} GPU(s) {mode}", [*launch, *flag, f"--out_dir={run_dir}"], 150, log)
        train_row(f"torchrun {gpus} GPU(s), {mode} (nccl) + DCP save", run_dir, ok, seconds, steps,
                  checkpoints=sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")))
        resume = [*launch, f"--out_dir={run_dir}", f"--max_steps={steps + 5}", "--resume=true"]
        ok, seconds, _ = run("resume", resume + ([] if other == "none" else [f"--data_parallel={other}"]), 120, log)
        train_row(f"DCP resume to 5 more steps ({other})", run_dir, ok, seconds, steps + 5)

    run_dir = out / "compiled"
    ok, seconds, _ = run("train 1 GPU compiled", [python, "train.py", *common, "--compile=true",
                                                  f"--out_dir={run_dir}"], 300, log)
    train_row("train.py 1 GPU, bf16, --compile=true", run_dir, ok, seconds, steps)

    # the MFU figure: the whole model compiled, the largest micro-batch of the H100 runs (64 x 1024 tokens)
    run_dir = out / "compiled_b64"
    ok, seconds, _ = run("train 1 GPU compiled, batch 64", [python, "train.py", *common, "--compile=true",
                                                            "--batch_size=64", "--global_batch_tokens=65536",
                                                            f"--out_dir={run_dir}"], 300, log)
    train_row("train.py 1 GPU, bf16, compiled, batch 64 x 1024", run_dir, ok, seconds, steps)
    run_dir = out / "compiled_b64_ac"  # the trade: activations recomputed for memory
    ok, seconds, _ = run("train 1 GPU compiled, batch 64, checkpointing", [
        python, "train.py", *common, "--compile=true", "--batch_size=64", "--global_batch_tokens=65536",
        "--activation_checkpointing=true", f"--out_dir={run_dir}"], 300, log)
    train_row("... the same with --activation_checkpointing=true", run_dir, ok, seconds, steps)

    ok, seconds, text = run("CUDA tests", [python, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
                            180, log)
    rows.append({"check": "pytest -m cuda (grouped MoE vs loop, bench CUDA)", "pass": ok, "seconds": seconds,
                 "summary": text.strip().splitlines()[-1] if text.strip() else ""})
    write_report(out, gpus, rows)

    rounds = "--rounds=10" if quick else "--rounds=20"
    ok, seconds, text = run("bench", [python, "tools/bench.py", "--preset=gpt2-124m", "--moe_preset=9bA1b", rounds,
                                      "--json"], 240, log)
    lines = [line for line in text.splitlines() if line.startswith("{")]  # stdout's JSON; stderr has progress
    bench = json.loads(lines[-1]) if ok and lines else {}
    (out / "bench.json").write_text(json.dumps(bench, indent=1) + "\n")
    rows.append({"check": "bench.py gpt2-124m, bf16, eager", "pass": ok and bool(bench), "seconds": seconds,
                 **{k: bench.get(k) for k in ("mfu_ntp", "mfu_nitp", "overhead_measured", "overhead_flops",
                                              "moe_vs_dense", "moe_path", "ntp_tokens_per_s", "targets")}})
    write_report(out, gpus, rows)

    profile_txt = out / "profile.txt"
    ok, seconds, text = run("profile", [python, "tools/profile_step.py", "--preset=gpt2-124m", "--batch_size=64",
                                        "--compile", "--moe_preset=9bA1b", f"--out={profile_txt}"], 300, log)
    firsts = [line for line in text.splitlines() if line.startswith("=====")]  # one per part: its figures
    rows.append({"check": "profile_step.py gpt2-124m b64 compiled, 9bA1b layer", "pass": ok, "seconds": seconds,
                 "figures": " | ".join(line.strip("= ").split(" a call")[0] for line in firsts)})
    write_report(out, gpus, rows)

    print(f"\n{'check':<52}{'result':<8}{'seconds':>8}  figures")
    for row in rows:
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                            if k not in ("check", "pass", "seconds") and v is not None)
        print(f"{row['check']:<52}{'PASS' if row['pass'] else 'FAIL':<8}{row['seconds']:>8.0f}  {figures}")
    print(f"wrote {out / 'report.json'}")
    return 0 if all(row["pass"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
