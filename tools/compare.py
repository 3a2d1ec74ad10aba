"""compare.py: the main job. Train NTP and NITP side by side on the same data and seeds, then compare.

    python compare.py                                  # NTP vs NITP, one seed, CPU, ~15 min on 2 cores
    python compare.py --seeds=3                        # every metric as mean ± std over 3 seeds
    python compare.py --variants=ntp,nitp,mtp,nextlat  # NITP beside its peers MTP and NextLat (peers.py)
    python compare.py --variants=ntp,nitp,shift0,mse,no_stopgrad,no_projector,deep_target --against=ntp,nitp
    python compare.py --max_steps=40 --preset=small-moe   # any other --key=value goes to every train.py run

For each seed and variant it runs `train.py` in a subprocess (OUT_DIR/seedS/VARIANT; a finished run is
skipped when the command is repeated, an interrupted one resumes from its checkpoint), then evaluates
all runs with eval.make_report on the same held-out tokens (OUT_DIR/report: figures, report.md,
metrics.json; files of the user's there are refused before any training) and writes OUT_DIR/report/summary.md
+ summary.json: each metric per variant as mean ± std over seeds, and, against the first variant (or each
variant --against names), whether the difference exceeds the seed spread, and each variant's training step
time against the first variant's (from the runs' logs) beside its FLOPs floor, and at which eval steps during
training the curves part beyond the seed spread.
Its figures: variants.png (every seed's final value beside the references' bands), curves.png (the metrics
logged during training, mean ± std over seeds per variant).
A variant is a name from VARIANTS: one row of the paper's ablation table, or a peer objective, as train.py flags.
Imports eval.py, model.py and support/ (report, metrics, flops; never train.py: it runs as its
own process, as a user would run it).
"""

import json
import statistics
import subprocess
import sys
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as tools/NAME.py: the core is one level up
import config
import eval as eval_lib
import model as model_lib
from support import checkpoint, files, flops, metrics, report, runtime

REPO = Path(__file__).resolve().parents[1]

# the paper's ablation table (docs/method.md, "Ablations and their flags") as train.py flags
VARIANTS = {
    "ntp": {"objective": "ntp"},
    "nitp": {"objective": "nitp"},
    "shift0": {"objective": "nitp", "shift": 0},               # predict the current token's shallow state
    "mse": {"objective": "nitp", "loss_type": "mse"},
    "smooth_l1": {"objective": "nitp", "loss_type": "smooth_l1"},
    "kl": {"objective": "nitp", "loss_type": "kl"},
    "no_stopgrad": {"objective": "nitp", "stop_grad": False},
    "linear_projector": {"objective": "nitp", "projector": "linear"},
    "no_projector": {"objective": "nitp", "projector": "none"},
    "deep_target": {"objective": "nitp", "target_layer": -2},  # n_layer - 1 for any depth (model.nitp_defaults)
    "cosreg": {"objective": "cosreg"},                         # the generic anti-anisotropy regulariser
    # NITP's peers, training-only objectives too (docs/method.md, "Peers: MTP and NextLat"), at their defaults
    "mtp": {"objective": "mtp"},                               # DeepSeek-V3's multi-token prediction, depth 1
    "nextlat": {"objective": "nextlat"},                       # next-latent prediction
}
TOKENS_PER_S, FLOPS_OVERHEAD = "train_tokens_per_s", "flops_overhead"  # training_speed's keys
VARIANTS_PNG, CURVES_PNG = "variants.png", "curves.png"  # write_summary's figures, linked from summary.md
SUMMARY_FILES = ("summary.md", "summary.json", VARIANTS_PNG, CURVES_PNG)  # what write_summary adds to the report
# (metric key in eval.evaluate_run's or training_speed's result, label, format, what the paper reports for NITP vs NTP)
METRICS = [(metrics.VAL_LOSS, "val loss", ".4f", "about unchanged"),
           (metrics.EFFECTIVE_RANK, "eff. rank, last hidden state", ".1f", "higher"),
           (metrics.AVG_COSINE, "avg cosine, last hidden state", ".3f", "lower"),
           (metrics.TARGET_EFFECTIVE_RANK, "eff. rank, NITP's target layer", ".1f", "not reported"),
           (metrics.TARGET_AVG_COSINE, "avg cosine, NITP's target layer", ".3f", "not reported"),
           (metrics.FINAL_AUX_LOSS, "auxiliary loss, held out (its own units; ~0: trivially satisfied)", ".4f",
            "cosine loss decreasing, not collapsing"),
           (eval_lib.PROBE_ACCURACY, "probe acc", ".3f", "higher"), (eval_lib.MC_ACCURACY, "MC acc", ".3f", "higher"),
           (TOKENS_PER_S, "training tokens/s (median of the logged windows)", ",.0f", "2.3% more FLOPs at 9bA1b")]


@dataclass
class CompareConfig:
    variants: str = "ntp,nitp"      # comma-separated names from VARIANTS; the first is the baseline
    against: str = ""               # variants every other one is compared with (comma-separated); "": the baseline
    seeds: int = 1                  # seeds base_seed, base_seed + 1, ...
    base_seed: int = 1337
    out_dir: str = "runs/compare"
    eval_max_tokens: int = 8192     # held-out tokens for the geometry metrics (eval.EvalConfig.max_tokens)
    train_args: tuple = ()          # every other --key=value, passed unchanged to each train.py run


def parse_args(argv=None) -> CompareConfig:
    argv = sys.argv[1:] if argv is None else list(argv)
    if runtime.wants_help(argv):
        print(__doc__, "CompareConfig flags (default):", *runtime.flag_help(CompareConfig, skip=("train_args",)),
              "variants: " + ", ".join(VARIANTS), "Other --key=value flags go to train.py (see train.py --help).",
              sep="\n")
        raise SystemExit(0)
    hints = {key: hint for key, hint in typing.get_type_hints(CompareConfig).items() if key != "train_args"}
    values, train_args = {}, []
    for key, value, arg in runtime.split_flags(argv):
        if key in ("objective", "seed", "resume"):
            raise ValueError(f"--{key} is set by compare.py for each run; use --variants and --seeds")
        if key in hints:
            values[key] = runtime.coerce_value(key, value, hints[key], from_cli=True)
        else:
            train_args.append(arg)
    cfg = CompareConfig(**values, train_args=tuple(train_args))
    if not variant_names(cfg):
        raise ValueError("--variants is empty; give one or more of them, e.g. --variants=ntp,nitp")
    if not cfg.out_dir.strip():  # Path("") is the current folder: its runs and report would land there
        raise ValueError("--out_dir is empty; give the folder for the runs and their report, e.g. "
                         "--out_dir=runs/compare")
    if Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        raise ValueError(f"--out_dir={cfg.out_dir} is a file, not a folder; pass a folder path")
    unknown = [v for v in variant_names(cfg) if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    missing = [v for v in references(cfg) if v not in variant_names(cfg)]
    if missing:
        raise ValueError(f"--against names {', '.join(missing)}, which --variants does not run; add it there")
    if cfg.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {cfg.seeds}")
    try:  # its checks, and every run's train.py flags', before any run
        eval_lib.EvalConfig(max_tokens=cfg.eval_max_tokens)
    except ValueError as err:  # it names its own field: --max_tokens is --eval_max_tokens here
        raise ValueError(str(err).replace("--max_tokens=", "--eval_max_tokens=")) from None
    for variant in variant_names(cfg):
        config.resolve_config(config.parse_config(train_flags(cfg, variant, cfg.base_seed, Path(cfg.out_dir))))
    # the report folder takes eval.py's report and this summary: a file of the user's there is refused now, not after
    # hours of training
    report.check_out_dir(report_dir(cfg), eval_lib.run_names([d for _, _, d in jobs(cfg)]), SUMMARY_FILES,
                         where=f"--out_dir={cfg.out_dir}: {report_dir(cfg)}")
    return cfg


class Stopped(RuntimeError):
    """A training run stopped by a signal (Ctrl-C): compare.py exits as it did, 128 + N."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def jobs(cfg: CompareConfig) -> list[tuple[int, str, Path]]:
    """(seed, variant, run folder) of every run, in training order."""
    return [(seed, v, Path(cfg.out_dir) / f"seed{seed}" / v) for seed in range(cfg.base_seed, cfg.base_seed + cfg.seeds)
            for v in variant_names(cfg)]


def report_dir(cfg: CompareConfig) -> Path:
    return Path(cfg.out_dir) / "report"


def variant_names(cfg: CompareConfig) -> list[str]:
    names = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    if len(names) != len(set(names)):
        raise ValueError(f"--variants lists a name twice: {cfg.variants!r}")
    return names


def references(cfg: CompareConfig) -> list[str]:
    """The variants the others are compared with: --against, else the baseline (the first variant)."""
    return [v.strip() for v in cfg.against.split(",") if v.strip()] or variant_names(cfg)[:1]


def train_flags(cfg: CompareConfig, variant: str, seed: int, run_dir: Path) -> list[str]:
    """train.py's flags for one run: the variant's switches, then the user's flags (they win), seed, out_dir."""
    switches = VARIANTS[variant]
    return ([f"--{k}={v}" for k, v in switches.items()] + list(cfg.train_args)
            + [f"--seed={seed}", f"--out_dir={run_dir}"])


def run_training(flags: list[str], run_dir: Path, label: str) -> float:
    """Run train.py once (resuming a partial run), streaming its output with a prefix; returns seconds."""
    done_file = run_dir / "compare_done.json"
    reached, planned = finished_steps(run_dir)
    finished = reached is not None and reached == planned
    if finished and done_file.exists() and json.loads(done_file.read_text()).get("flags") == flags:
        print(f"[{label}] already trained with these flags: skipped ({run_dir})", flush=True)
        return 0.0
    resume = ["--resume=true"] if checkpoint.latest(run_dir) is not None else []
    command = [sys.executable, str(REPO / "train.py"), *flags, *resume]
    print(f"[{label}] {' '.join(command[1:])}", flush=True)
    t0 = time.perf_counter()
    # its own session (a Ctrl-C reaches it once, through us), dying with us even if we are killed outright
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          start_new_session=True, preexec_fn=runtime.die_with_parent) as proc, \
            runtime.forward_signals(proc):
        for line in proc.stdout:
            print(f"[{label}] {line}", end="", flush=True)
    if proc.returncode > 128:
        raise Stopped(proc.returncode, f"train.py for {label} was stopped by signal {proc.returncode - 128} (its "
                      "checkpoint is saved); rerun the same compare.py command to resume it")
    if proc.returncode != 0:
        raise RuntimeError(f"train.py failed for {label} (exit {proc.returncode}); its output is above. "
                           f"Rerun the same compare.py command to resume after fixing the cause.")
    reached, planned = finished_steps(run_dir)
    if reached != planned:  # never compare a run that stopped early with finished ones
        raise RuntimeError(f"train.py for {label} ended at step {reached} of {planned}; rerun the same compare.py "
                           "command to resume it")
    seconds = time.perf_counter() - t0
    files.write_text_atomically(done_file, json.dumps({"flags": flags, "seconds": seconds, "step": reached}))
    return seconds


def finished_steps(run_dir: Path) -> tuple[int | None, int | None]:
    """(step of the newest checkpoint, the run's max_steps), None for what is missing."""
    latest = checkpoint.latest(run_dir)
    if latest is None:
        return None, None
    meta = checkpoint.read_meta(latest)
    return meta.get("step"), meta.get("train_config", {}).get("max_steps")


def training_speed(run_dir: Path) -> dict:
    """A run's measured training speed, the median tokens/s of its logged train windows after the first (warm-up:
    allocator, caches; a run with one window keeps it), and its objective's FLOPs overhead over NTP
    (flops.flops_per_token's aux_ratio), from its log and its checkpoint. The speed is wall clock on whatever else
    the machine ran: bench.py times it controlled."""
    log = eval_lib.read_log(run_dir / "log.jsonl")
    speeds = [r["tokens_per_s"] for r in log if r.get("kind") == "train"]
    speeds = speeds[1:] or speeds  # a run too short for two windows keeps its one
    meta = checkpoint.read_meta(checkpoint.latest(run_dir))
    train_cfg = types.SimpleNamespace(**meta["train_config"])  # aux_flops_kwargs reads a few of its fields
    mcfg = model_lib.GPTConfig.from_dict(meta["model_config"])
    cost = flops.flops_per_token(mcfg, train_cfg.seq_len, **flops.aux_flops_kwargs(train_cfg, mcfg))
    return {TOKENS_PER_S: statistics.median(speeds) if speeds else None, FLOPS_OVERHEAD: cost["aux_ratio"]}


def step_overheads(results: list[dict], names: list[str]) -> dict:
    """{variant: {"measured": median over seeds of (baseline tokens/s / variant tokens/s - 1), "floor": the same
    ratio of their FLOPs per token - 1}} for every variant but the baseline (names[0]), paired by seed."""
    by_seed = {(r["variant"], r["seed"]): r for r in results}
    out = {}
    for v in names[1:]:
        pairs = [(by_seed[(names[0], seed)], r) for (name, seed), r in by_seed.items()
                 if name == v and (names[0], seed) in by_seed]
        ratios = [b[TOKENS_PER_S] / r[TOKENS_PER_S] - 1 for b, r in pairs
                  if b.get(TOKENS_PER_S) and r.get(TOKENS_PER_S)]
        if ratios:
            b, r = pairs[0]
            out[v] = {"measured": statistics.median(ratios), "seeds": len(ratios),
                      "floor": (1 + r[FLOPS_OVERHEAD]) / (1 + b[FLOPS_OVERHEAD]) - 1}
    return out


def difference(values: list[float], reference: list[float]) -> dict:
    """A variant's per-seed values against a reference's: the difference of means, in how many seeds the paired
    difference has that sign (one seed's runs share the initial weights and the batches), and whether it exceeds
    the seed spread, i.e. |difference| > std + std_reference (the one-sigma bands do not overlap; None: one seed)."""
    diff = statistics.fmean(values) - statistics.fmean(reference)
    paired = [a - b for a, b in zip(values, reference)]
    spreads = [statistics.stdev(v) for v in (values, reference) if len(v) > 1]
    return {"diff": diff, "same_sign_seeds": sum((d > 0) == (diff > 0) and d != 0 for d in paired),
            "exceeds_spread": abs(diff) > sum(spreads) if len(spreads) == 2 else None}


def aggregate(results: list[dict], cfg: CompareConfig) -> dict:
    """{variant: {metric: [value per seed]}} plus mean/std and, against each reference, the difference test."""
    names, refs = variant_names(cfg), references(cfg)
    per_variant = {v: {key: {} for key, *_ in METRICS} for v in names}  # {variant: {metric: {seed: value}}}
    for r in sorted(results, key=lambda r: r["seed"]):
        for key, *_ in METRICS:
            if r.get(key) is not None:
                per_variant[r["variant"]][key][r["seed"]] = r[key]
    summary = {"variants": names, "seeds": cfg.seeds, "baseline": names[0], "against": refs, "metrics": {}}
    for key, label, _, paper in METRICS:
        entry = {"label": label, "paper": paper}
        for v in names:
            by_seed = per_variant[v][key]
            if not by_seed:
                continue
            values = list(by_seed.values())
            # compared only where the reference has the same seeds: each difference pairs the runs of one seed
            entry[v] = {"values": values, "mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else None,
                        "vs": {ref: difference(values, [per_variant[ref][key][s] for s in by_seed]) for ref in refs
                               if ref != v and per_variant[ref][key].keys() == by_seed.keys()}}
        summary["metrics"][key] = entry
    summary["step_overhead"] = step_overheads(results, names)
    summary["curves"] = aggregate_curves(results, names, refs)
    return summary


def aggregate_curves(results: list[dict], names: list[str], refs: list[str]) -> dict:
    """The metrics logged during training (the eval lines' eval.HISTORY_KEYS), per variant over seeds:
    {key: {variant: {"steps", "mean", "std", "seeds", "apart": {ref: {"steps", "of"}}}}}, at the eval steps every
    seed logged; "apart": of the "of" steps both logged, those where the variant's and the reference's one-sigma
    bands do not overlap (the curves part beyond the seed spread); only over the same seeds, and >= 2 of them."""
    curves = {}
    for key in eval_lib.HISTORY_KEYS[1:]:
        per_variant = {}
        for v in names:
            by_seed = {r["seed"]: {e["step"]: e[key] for e in r["history"]["eval"] if e.get(key) is not None}
                       for r in results if r["variant"] == v and "history" in r}
            steps = sorted(set.intersection(*map(set, by_seed.values()))) if by_seed else []
            if steps:
                at = [[by_seed[seed][t] for seed in sorted(by_seed)] for t in steps]
                per_variant[v] = {"steps": steps, "seeds": sorted(by_seed), "mean": [statistics.fmean(x) for x in at],
                                  "std": [statistics.stdev(x) if len(x) > 1 else None for x in at]}
        for v, c in per_variant.items():
            c["apart"] = {}
            for ref in refs:
                r = per_variant.get(ref)
                if ref == v or r is None or r["seeds"] != c["seeds"] or len(c["seeds"]) < 2:
                    continue
                ref_at = {t: (m, s) for t, m, s in zip(r["steps"], r["mean"], r["std"])}
                both = [(t, m, s) for t, m, s in zip(c["steps"], c["mean"], c["std"]) if t in ref_at]
                c["apart"][ref] = {"of": len(both), "steps": [t for t, m, s in both
                                                              if abs(m - ref_at[t][0]) > s + ref_at[t][1]]}
        curves[key] = per_variant
    return curves


def _step_list(steps: list[int], shown: int = 8) -> str:
    return ", ".join(map(str, steps[:shown])) + (f", ... {steps[-1]}" if len(steps) > shown else "")


def write_summary(summary: dict, out_dir: Path, wall_s: float) -> Path:
    names, refs, n = summary["variants"], summary["against"], summary["seeds"]
    labels = {key: label for key, label, *_ in METRICS}
    verdicts = {True: "**exceeds spread**", False: "within spread", None: "one seed"}
    lines = [f"# {' vs '.join(names)}: summary over seeds", "",
             f"{n} seed(s); mean ± std over seeds (std needs >= 2 seeds). Against "
             + " and ".join(f"`{r}`" for r in refs) + ": the difference of means, in how many seeds the paired "
             "difference has that sign (the runs of one seed share the initial weights and the batches), and "
             "whether |difference| > std(variant) + std(reference), i.e. the two one-sigma bands do not overlap."]
    for key, entry in summary["metrics"].items():
        spec = next(s for k, _, s, _ in METRICS if k == key)
        rows = [v for v in names if v in entry]
        if not rows:
            continue
        lines += ["", f"**{entry['label']}** (paper, NITP against NTP: {entry['paper']})", "",
                  "| variant | mean ± std | " + " | ".join(f"against {r}" for r in refs) + " |",
                  "|---|---|" + "---|" * len(refs)]
        for v in rows:
            e = entry[v]
            cells = [format(e["mean"], spec) + ("" if e["std"] is None else f" ± {e['std']:{spec}}")]
            for ref in refs:
                d = e["vs"].get(ref)
                cells.append("-" if d is None else f"{d['diff']:+{spec}} ({d['same_sign_seeds']}/{len(e['values'])}"
                             f" seeds, {verdicts[d['exceeds_spread']]})")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    for ref in refs:
        rows = [f"* {labels[key]}: " + "; ".join(
                    f"{v} {len(c['apart'][ref]['steps'])} of {c['apart'][ref]['of']}" + (
                        f" ({_step_list(c['apart'][ref]['steps'])})" if c["apart"][ref]["steps"] else "")
                    for v, c in per_variant.items() if ref in c["apart"])
                for key, per_variant in summary.get("curves", {}).items()
                if any(ref in c["apart"] for c in per_variant.values())]
        if rows:
            lines += ["", f"During training, against `{ref}`: at how many of the eval steps every seed logged the "
                      "one-sigma bands do not overlap (the curves part beyond the seed spread), and which "
                      f"([{CURVES_PNG}]({CURVES_PNG}))", "", *rows]
    overheads, base = summary.get("step_overhead", {}), summary["baseline"]
    if overheads:
        lines += ["", f"Training step time against `{base}`, from the runs' own logs (paired by seed, median over "
                  "seeds; wall clock on a machine that may have run other work: `bench.py` measures it controlled), "
                  "beside the FLOPs floor (flops.flops_per_token): " + "; ".join(
                      f"{v} {o['measured']:+.1%} (floor {o['floor']:+.1%})" for v, o in overheads.items()) + "."]
    lines += ["", f"![every metric by variant: one dot per seed, mean ± std, the references' bands]({VARIANTS_PNG})",
              "", f"Wall time of the whole command: {wall_s / 60:.1f} min. Per-run details, figures and how each "
              "metric is measured: [report.md](report.md)."]
    path = out_dir / SUMMARY_FILES[0]
    files.write_text_atomically(path, "\n".join(lines) + "\n")
    files.write_text_atomically(out_dir / SUMMARY_FILES[1], json.dumps(summary, indent=1))
    report.plot_variants(summary, out_dir / VARIANTS_PNG, [key for key, *_ in METRICS if key != TOKENS_PER_S])
    report.plot_curves(summary, out_dir / CURVES_PNG, labels)
    return path


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
    except ValueError as err:
        print(f"compare.py: error: {err}", file=sys.stderr)
        return 2
    t0, runs = time.perf_counter(), jobs(cfg)
    run_dirs, seconds = [], []
    for i, (seed, variant, run_dir) in enumerate(runs):
        eta = "" if not seconds else f", eta {statistics.fmean(seconds) * (len(runs) - i) / 60:.0f} min"
        label = f"{i + 1}/{len(runs)} seed {seed} {variant}{eta}"
        try:
            s = run_training(train_flags(cfg, variant, seed, run_dir), run_dir, label)
        except (RuntimeError, ValueError) as err:
            print(f"compare.py: error: {err}", file=sys.stderr)
            return err.code if isinstance(err, Stopped) else 1
        seconds += [s] if s > 0 else []
        run_dirs.append(run_dir)
    print(f"[eval] evaluating {len(run_dirs)} runs on the same held-out tokens ...", flush=True)
    out = report_dir(cfg)
    results = eval_lib.make_report(run_dirs, out, eval_lib.EvalConfig(max_tokens=cfg.eval_max_tokens))
    for r, (seed, variant, run_dir) in zip(results, runs):
        r.update(training_speed(run_dir), variant=variant, seed=seed)
    summary = aggregate(results, cfg)
    path = write_summary(summary, out, time.perf_counter() - t0)
    print(path.read_text(), f"wrote {out / 'report.md'} and {path}", sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
