"""scripts/gpu_check.py: the GPU acceptance run, one command, under 10 minutes on one H100.

    python scripts/gpu_check.py                    # every visible GPU; writes runs/gpu_check/report.json
    python scripts/gpu_check.py --quick            # fewer steps and rounds (a smoke test)

What a CPU machine cannot show, each step a separate process as a user would run it:
  1. train.py, 1 GPU, gpt2-124m with NITP on the embedded corpus, bf16: eager, then --compile=true
     (per-block torch.compile under FSDP2); final loss, tokens/s, MFU, peak memory;
  2. the CUDA tests of the suite (`pytest -m cuda`): the grouped-GEMM MoE path against the expert loop
     on the GPU, bench.py's CUDA figures;
  3. bench.py --preset=gpt2-124m --compile: MFU, NITP's step-time overhead against its FLOPs floor, and the
     grouped-GEMM MoE layer (9bA1b's) against a dense layer of the same active FLOPs, with the targets;
  4. torchrun on every visible GPU with FSDP2 (nccl), a DCP checkpoint, then --resume=true to more steps.
It prints one table of pass/fail and figures and writes it as JSON. Imports only the standard library;
everything else runs in the subprocesses.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "gpu_check"


def run(name, command, timeout):
    """Run `command` in the repo; (passed, seconds, stdout + stderr)."""
    print(f"[gpu_check] {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        ok, text = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        ok, text = False, f"timed out after {timeout} s\n{err.stdout or ''}{err.stderr or ''}"
    seconds = time.perf_counter() - start
    if not ok:
        print(text[-2000:], flush=True)
    return ok, seconds, text


def last_train_line(out_dir) -> dict:
    log = out_dir / "log.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return next((r for r in reversed(lines) if r.get("kind") == "train"), {})


def gpu_count() -> int:
    text = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                          capture_output=True, text=True).stdout.strip()
    return int(text or 0)


def main(argv=None) -> int:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    gpus = gpu_count()
    if gpus == 0:
        print("gpu_check: no CUDA GPU visible; run this on a GPU machine", file=sys.stderr)
        return 2
    python, steps = sys.executable, 10 if quick else 40
    common = ["--preset=gpt2-124m", "--objective=nitp", "--device=cuda", "--seq_len=1024", "--batch_size=16",
              "--global_batch_tokens=16384", "--warmup_steps=5", "--eval_interval=0", "--eval_batches=2",
              f"--max_steps={steps}", f"--log_interval={max(1, steps // 4)}", "--ckpt_interval=0"]
    rows = []

    for label, extra in (("train 1 GPU eager bf16", []), ("train 1 GPU compiled bf16", ["--compile=true"])):
        out = OUT / label.split()[-2]
        ok, seconds, _ = run(label, [python, "train.py", *common, *extra, f"--out_dir={out}"], 420)
        last = last_train_line(out)
        rows.append({"check": label, "pass": ok and last.get("step") == steps, "seconds": seconds,
                     "loss": last.get("loss"), "tokens_per_s": last.get("tokens_per_s"), "mfu": last.get("mfu"),
                     "peak_mem_gib": last.get("peak_mem_gib")})

    ok, seconds, text = run("CUDA tests", [python, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], 420)
    rows.append({"check": "pytest -m cuda (grouped MoE vs loop, bench CUDA)", "pass": ok, "seconds": seconds,
                 "summary": text.strip().splitlines()[-1] if text.strip() else ""})

    rounds = "--rounds=10" if quick else "--rounds=30"
    ok, seconds, text = run("bench", [python, "bench.py", "--preset=gpt2-124m", "--compile", "--moe_preset=9bA1b",
                                      rounds, "--json"], 540)
    bench = json.loads(text.strip().splitlines()[-1]) if ok else {}
    rows.append({"check": "bench gpt2-124m compiled bf16", "pass": ok and all(v is not False for v in
                                                                               bench.get("targets", {}).values()),
                 "seconds": seconds, **{k: bench.get(k) for k in ("mfu_ntp", "mfu_nitp", "overhead_measured",
                                                                  "overhead_flops", "moe_vs_dense", "moe_path",
                                                                  "ntp_tokens_per_s", "targets")}})

    out = OUT / "fsdp"
    fsdp = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "train.py", *common,
            "--batch_size=2", f"--global_batch_tokens={2 * 2 * 1024 * gpus}", "--decay_frac=0", f"--out_dir={out}"]
    ok, seconds, _ = run(f"torchrun {gpus} GPU(s) FSDP2", fsdp, 420)
    first = last_train_line(out)
    ok_resume, seconds_resume, _ = run("resume", fsdp[:-2] + [f"--max_steps={steps + 5}", "--resume=true",
                                                              f"--out_dir={out}"], 420)
    resumed = last_train_line(out)
    rows.append({"check": f"torchrun {gpus} GPU(s), FSDP2 + DCP save", "pass": ok and first.get("step") == steps,
                 "seconds": seconds, "tokens_per_s": first.get("tokens_per_s"), "mfu": first.get("mfu"),
                 "peak_mem_gib": first.get("peak_mem_gib")})
    rows.append({"check": "DCP resume to more steps", "pass": ok_resume and resumed.get("step") == steps + 5,
                 "seconds": seconds_resume, "loss": resumed.get("loss")})

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.json").write_text(json.dumps({"gpus": gpus, "rows": rows}, indent=1) + "\n")
    print(f"\n{'check':<52}{'result':<8}{'seconds':>8}  figures")
    for row in rows:
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                            if k not in ("check", "pass", "seconds") and v is not None)
        print(f"{row['check']:<52}{'PASS' if row['pass'] else 'FAIL':<8}{row['seconds']:>8.0f}  {figures}")
    print(f"wrote {OUT / 'report.json'}")
    return 0 if all(row["pass"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
