"""report.py: the figures and the markdown report of an evaluation, drawn from eval.py's per-run results.

eval.py measures (geometry, probe, multiple choice); this file only shows what it measured. Its input is
the list of per-run result dicts that eval.evaluate_run returns (the same dicts as NAME/metrics.json):
scalars at the top level under the keys of metrics.py (val_loss, effective_rank, avg_cosine), per-layer
spectra in "layers", the log.jsonl history in "history", and the nested "probe" / "mc" results when those
ran. eval.make_report words the held-out data with heldout_note, then calls write_all, which writes

    nitp_report.json                                                                # MARK: eval.py's own folder
    for name, (plot, caption) in FIGURES.items(): plot(results, out_dir / name)    # five PNGs
    NAME/metrics.json                                                               # each result as it is
    write_report(results, out_dir, cfg, data_note)                                  # report.md

into a folder that is new, holds none of those files, or holds an earlier report of eval.py's own (check_out_dir:
its MARK, or a report.md that starts with the report's title); files of those names that are the user's are
refused, never replaced.

Figures: the spectrum of the last hidden states, the spectra of every layer, effective rank and average
cosine vs training step (the paper's Figure 1), the auxiliary loss curves (one panel per quantity: NITP's
cosine, its MSE / Smooth-L1 / KL ablations, its peers' and the regulariser's), the effective rank by depth.
Runs of one group (the seeds of one variant) share a colour, differ by dash pattern and share one legend
entry. compare.py also draws plot_variants and plot_curves from its summary over seeds. Paths in report.md are
relative to the repository (files.repo_relative), never a machine's absolute path, so a report can be
committed or sent as it is.

The only file that imports matplotlib, through its object API (Figure, no pyplot): no global backend switch,
no display needed. Imports metrics.py (the result keys) and files.py (repo_relative), never eval.py.
Nothing runs at import.
"""

import json
import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # object API: no pyplot, no global backend switch, no display

from support import files, metrics


# ---------------------------------------------------------------------------- figures
def _save(fig, path) -> str:
    """Save a figure under a temporary name, then rename it: a crash never leaves a torn PNG."""
    tmp = Path(f"{path}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return str(path)


def _no_data(ax, message):
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)


def _group(r) -> str:
    return r.get("group", r["name"])


def _palette(n_colours: int):
    return colormaps["tab10" if n_colours <= 10 else "tab20"]


def _styles(results) -> list[dict]:
    """Matplotlib style per run: one colour per group (the run folder's name, e.g. every seed of `nitp`),
    one dash pattern per run within its group; tab10's colours, tab20's beyond ten groups."""
    groups = list(dict.fromkeys(_group(r) for r in results))
    palette = _palette(len(groups))
    seen, styles = {}, []
    for r in results:
        g = _group(r)
        seen[g] = seen.get(g, -1) + 1
        styles.append({"color": palette(groups.index(g) % palette.N), "ls": ("-", "--", ":", "-.")[seen[g] % 4]})
    return styles


def _legend_labels(results) -> list[str]:
    """One legend entry per group: a group of one run shows the run's label; the first run of a larger group
    (the seeds of a variant) shows "GROUP (objective, N runs)" and the others none ("_..." labels are skipped)."""
    sizes = {}
    for r in results:
        sizes[_group(r)] = sizes.get(_group(r), 0) + 1
    seen, labels = set(), []
    for r in results:
        g = _group(r)
        labels.append(r["label"] if sizes[g] == 1 else "_nolegend_" if g in seen
                      else f"{g} ({r['objective']}, {sizes[g]} runs)")
        seen.add(g)
    return labels


def plot_final_spectra(results, path) -> str:
    """Figure 1: normalised singular values of the last hidden states, all runs overlaid."""
    ax = (fig := Figure(figsize=(7.5, 4.8))).add_subplot()
    for r, style, label in zip(results, _styles(results), _legend_labels(results)):
        s = np.asarray(r["layers"][-1]["singular_values"])
        ax.plot(np.arange(1, len(s) + 1), s / max(s[0], 1e-300), **style,
                label=f"{label}: eff. rank {r[metrics.EFFECTIVE_RANK]:.1f}" if label == r["label"] else label)
    ax.set(yscale="log", xlabel="index i (singular values sorted, largest first)", ylabel="σ_i / σ_1  (log scale)",
           title="Spectrum of the last hidden states (final-norm output, mean-centred)\n"
                 "normalised by the largest; a flatter curve = higher rank, less collapse")
    ax.grid(alpha=0.3), ax.legend()
    return _save(fig, path)


def plot_layer_spectra(results, path) -> str:
    """Figure 2: one panel per group (its first run: one seed per variant), one spectrum per layer by depth."""
    first_of_group = {}
    for r in results:
        first_of_group.setdefault(_group(r), r)
    results = list(first_of_group.values())
    fig = Figure(figsize=(5.5 * len(results) + 1, 4.8))
    axes = fig.subplots(1, len(results), sharey=True, squeeze=False)[0]
    for ax, r in zip(axes, results):
        norm, cmap = Normalize(0, len(r["layers"]) - 1), colormaps["viridis"]
        for depth, layer in enumerate(r["layers"]):
            s = np.asarray(layer["singular_values"])
            ax.plot(np.arange(1, len(s) + 1), s / max(s[0], 1e-300), color=cmap(norm(depth)), lw=1.2)
        ax.set(yscale="log", title=r["label"], xlabel="index i (largest first)")
        ax.grid(alpha=0.3)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layer depth")
        ticks = np.unique(np.linspace(0, len(r["layers"]) - 1, min(len(r["layers"]), 7)).round().astype(int))
        bar.set_ticks(ticks, labels=[r["layers"][t]["name"] for t in ticks])
    axes[0].set_ylabel("σ_i / σ_1  (log scale)")
    fig.suptitle("Singular-value spectra of every layer's representations (mean-centred, normalised by the largest)")
    return _save(fig, path)


def plot_geometry_history(results, path) -> str:
    """Figure 3 (the paper's Figure 1): effective rank and average cosine vs step, of the last hidden states (top)
    and of the layer NITP targets (bottom); one legend, in the first panel with data."""
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    panels = [(metrics.EFFECTIVE_RANK, "effective rank", "last hidden state"),
              (metrics.AVG_COSINE, "average pairwise cosine", "last hidden state"),
              (metrics.TARGET_EFFECTIVE_RANK, "effective rank", "NITP's target layer"),
              (metrics.TARGET_AVG_COSINE, "average pairwise cosine", "NITP's target layer")]
    legend_shown = False
    for ax, (key, ylabel, where) in zip(fig.subplots(2, 2).flat, panels):
        drawn = False
        for r, style, label in zip(results, _styles(results), _legend_labels(results)):
            points = [(e["step"], e[key]) for e in r["history"]["eval"] if e.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, **style, label=label)
                drawn = True
        ax.set(xlabel="training step", ylabel=ylabel, title=f"{ylabel}, {where}")
        ax.grid(alpha=0.3)
        if not drawn:
            _no_data(ax, f"no eval lines with '{key}' in any log.jsonl")
        elif not legend_shown:
            ax.legend(fontsize="small")
            legend_shown = True
    fig.suptitle("Geometry during training, on the same validation tokens each time (each run's log.jsonl eval lines)")
    return _save(fig, path)


def _moving_average(values, half_width: int) -> np.ndarray:
    """Centred moving average over 2 * half_width + 1 points, symmetric windows shrinking at the ends: unlike
    an EMA it does not lag, so the early drop and the warm-up hump stay where they happened."""
    sums, index = np.concatenate([[0.0], np.cumsum(values)]), np.arange(len(values))
    half = np.minimum(np.minimum(index, len(values) - 1 - index), half_width)
    return (sums[index + half + 1] - sums[index - half]) / (2 * half + 1)


COSINE_LOSS = "1 - cos(P(h_t), z_t+1)"
AUX_LOSS_LABELS = {"nitp": COSINE_LOSS, "nitp, cosine": COSINE_LOSS,
                   "nitp, mse": "mean (P(h_t) - z_t+1)^2", "nitp, smooth_l1": "mean huber(P(h_t) - z_t+1)",
                   "nitp, kl": "KL(softmax z_t+1 || softmax P(h_t))", "cosreg": "mean pairwise cosine of h",
                   "mtp": "CE of token t+k+1", "nextlat": "weighted L_next-h + L_KL"}


def aux_quantity(r) -> str:
    """What a run's auxiliary loss measures: its objective, and for NITP its loss_type (eval.evaluate_run's
    "aux_loss_type"), so that a cosine loss and an MSE never share an axis."""
    return ", ".join(filter(None, (r["objective"], r.get("aux_loss_type"))))


def plot_aux_loss(results, path) -> str:
    """Figure 4: each run's own auxiliary loss (train loss_<objective> vs step), raw and smoothed, one panel per
    quantity (aux_quantity): the losses of different objectives or loss types never share an axis."""
    quantities = list(dict.fromkeys(aux_quantity(r) for r in results if r["history"]["train_aux"]))
    fig = Figure(figsize=(7.5, 4.8 * max(1, len(quantities))), layout="constrained")  # no panel overlaps the next
    axes = [fig.add_subplot(max(1, len(quantities)), 1, i + 1) for i in range(max(1, len(quantities)))]
    for ax, quantity in zip(axes, quantities):
        for r, style, label in zip(results, _styles(results), _legend_labels(results)):
            if aux_quantity(r) != quantity or not r["history"]["train_aux"]:
                continue
            steps, losses = zip(*r["history"]["train_aux"])
            ax.plot(steps, losses, color=style["color"], alpha=0.3, lw=0.8, marker="o" if len(losses) < 50 else None,
                    ms=3)
            ax.plot(steps, _moving_average(losses, len(losses) // 100), **style, lw=1.8, label=label)
        objective = quantity.split(",")[0]
        ax.set(yscale="log", xlabel="training step",
               ylabel=f"{metrics.aux_loss_key(objective)}: {AUX_LOSS_LABELS.get(quantity, quantity)}  (log)",
               title=f"{quantity}: auxiliary loss during training (train lines of log.jsonl)\n"
                     "light: every logged value; dark: centred moving average over ~1% of the run")
        ax.grid(alpha=0.3), ax.legend(fontsize="small")
    if not quantities:
        _no_data(axes[0], "no run logged an auxiliary loss (only NTP runs given)")
    return _save(fig, path)


def plot_rank_by_layer(results, path) -> str:
    """Figure 5: effective rank of every layer's representations, all runs overlaid."""
    ax = (fig := Figure(figsize=(7.5, 4.8))).add_subplot()
    for r, style, label in zip(results, _styles(results), _legend_labels(results)):
        ax.plot(range(len(r["layers"])), [layer[metrics.EFFECTIVE_RANK] for layer in r["layers"]], marker="o", **style,
                label=label)
    deepest = max(results, key=lambda r: len(r["layers"]))["layers"]
    ax.set_xticks(range(len(deepest)), [layer["name"].replace("block ", "") for layer in deepest])
    ax.set(xlabel="layer (embedding, block 1..L, final norm)", ylabel="effective rank",
           title="Effective rank of the representations at every depth\n(held-out tokens, covariance eigenvalues)")
    ax.grid(alpha=0.3), ax.legend()
    return _save(fig, path)


def _spans_decades(values) -> bool:
    """Whether a panel needs a log axis: positive values over more than two decades (an MSE beside a cosine loss)."""
    return min(values) > 0 and max(values) > 100 * min(values)


def plot_variants(summary, path, keys=None) -> str:
    """compare.py's figure: one panel per metric (`keys`, default every one in the summary), the variants along
    x; each seed's value a dot, mean ± std a black bar; each reference's (summary["against"]) mean ± std a
    shaded band across the panel, so that "exceeds the seed spread" can be read off. `summary` is
    compare.aggregate's dict: {"variants", "against", "metrics": {key: {"label", VARIANT: {"values", "mean",
    "std"}}}}. Positive quantities spanning more than 100x (losses of different loss types) get a log axis."""
    keys = [k for k in (summary["metrics"] if keys is None else keys)
            if any(v in summary["metrics"][k] for v in summary["variants"])]
    cols = min(3, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig = Figure(figsize=(5.2 * cols, 4.4 * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    names = summary["variants"]
    for ax, key in zip(axes, keys):
        entry = summary["metrics"][key]
        for i, ref in enumerate(r for r in summary["against"] if r in entry):
            mean, std = entry[ref]["mean"], entry[ref]["std"] or 0.0
            ax.axhspan(mean - std, mean + std, color=f"C{i}", alpha=0.15, lw=0)
            ax.axhline(mean, color=f"C{i}", lw=1, ls="--", label=f"{ref}: mean ± std")
        values = []
        for x, v in enumerate(names):
            if v not in entry:
                continue
            e, jitter = entry[v], np.linspace(-0.12, 0.12, len(entry[v]["values"]))
            ax.plot(x + jitter, e["values"], "o", color="0.45", ms=4, zorder=3)
            ax.errorbar(x, e["mean"], yerr=e["std"] or 0.0, fmt="_", color="k", ms=14, capsize=4, zorder=4)
            values += e["values"]
        if _spans_decades(values):
            ax.set_yscale("log")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set(title=entry["label"], xlim=(-0.6, len(names) - 0.4))
        ax.grid(alpha=0.3, axis="y")
        if ax.get_legend_handles_labels()[0]:  # a metric no reference has (NTP's auxiliary loss) draws no band
            ax.legend(fontsize="x-small")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(f"Each variant over {summary['seeds']} seed(s): dots = seeds, black = mean ± std, "
                 "bands = the references' mean ± std")
    return _save(fig, path)


def plot_curves(summary, path, labels: dict) -> str:
    """compare.py's other figure: the metrics logged during training (summary["curves"], compare.aggregate_curves),
    one panel each, every variant's mean over seeds as a line inside its ± std band. `labels`: {key: title}."""
    curves = {key: c for key, c in summary.get("curves", {}).items() if c}
    fig = Figure(figsize=(12, 4.2 * max(1, -(-len(curves) // 2))), layout="constrained")
    axes = list(fig.subplots(max(1, -(-len(curves) // 2)), 2, squeeze=False).flat)
    palette = _palette(len(summary["variants"]))
    for ax, (key, per_variant) in zip(axes, curves.items()):
        for i, v in enumerate(summary["variants"]):
            if v not in per_variant:
                continue
            c = per_variant[v]
            mean, std = np.asarray(c["mean"]), np.asarray([s or 0.0 for s in c["std"]])
            color = palette(i % palette.N)
            ax.plot(c["steps"], mean, color=color, lw=1.5, marker="o" if len(mean) <= 30 else None, ms=3,
                    label=f"{v} ({len(c['seeds'])} seeds)")
            ax.fill_between(c["steps"], mean - std, mean + std, color=color, alpha=0.2, lw=0)
        ax.set(title=labels.get(key, key), xlabel="training step")
        ax.grid(alpha=0.3)
    if curves:
        axes[0].legend(fontsize="x-small")
    else:
        _no_data(axes[0], "no eval lines in the runs' log.jsonl")
    for ax in axes[max(1, len(curves)):]:
        ax.set_visible(False)
    fig.suptitle("During training (each run's log.jsonl eval lines, the same validation tokens each time): "
                 "mean over seeds, band = ± std")
    return _save(fig, path)


FIGURES = {"spectra_final.png": (plot_final_spectra, "Normalised singular-value spectra of the last hidden states."),
           "spectra_layers.png": (plot_layer_spectra,
                                  "Spectra of every layer, one panel per run (first seed of each), by depth."),
           "geometry_vs_step.png": (plot_geometry_history, "Effective rank and average cosine during training "
                                    "(log.jsonl): last hidden state, target layer."),
           "aux_loss.png": (plot_aux_loss, "Each run's own auxiliary loss during training, one panel per "
                            "objective (and NITP loss type)."),
           "rank_by_layer.png": (plot_rank_by_layer, "Effective rank at every depth.")}


# ---------------------------------------------------------------------------- report
REPORT, TITLE = "report.md", "# NITP evaluation report"
MARK = "nitp_report.json"  # written into OUT_DIR before anything else: the folder holds a report of eval.py's own


def report_files(names) -> list[str]:
    """The files write_all writes for runs named `names`, relative to OUT_DIR."""
    return [REPORT, *FIGURES, *(f"{name}/metrics.json" for name in names)]


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n")
    except OSError:
        return ""


def check_folder_path(out_dir, what="the report", flag="--out") -> None:
    """ValueError (one line naming the flag) when `out_dir`, or the first of its parents that exists, is a file: no
    folder can be made there. eval.py's --out, and export.py's."""
    out_dir = Path(out_dir)
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag}={out_dir}: {existing} is a file, not a folder; pass a folder for {what} "
                         "(a new one is made)")


def check_out_dir(out_dir, names, beside=(), where=None) -> None:
    """ValueError (one line naming --out, or `where`, and the fix) unless OUT_DIR can take the report of runs `names`:
    a folder that is new, or holds none of report_files(names) (nor of `beside`: files written with it, compare.py's
    summary), or an earlier report of eval.py's own (its MARK, or, written before the mark, a report.md whose first
    line is TITLE), whose files are the ones replaced."""
    out_dir = Path(out_dir)
    check_folder_path(out_dir)
    where = where or f"--out={out_dir}"
    if (out_dir / MARK).is_file() or _first_line(out_dir / REPORT) == TITLE:
        return
    taken = [name for name in [*report_files(names), *beside] if (out_dir / name).exists()]
    if taken:
        shown = ", ".join(taken[:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
        raise ValueError(f"{where} holds {shown}, which eval.py did not write (no {MARK}) and would "
                         "replace; pass a new or empty folder, or move those files away")


def write_all(results, out_dir, cfg, data_note: str) -> Path:
    """Everything eval.make_report leaves in OUT_DIR: the five figures, NAME/metrics.json per run, report.md, and
    first MARK, so that a rerun replaces this report and only this one (check_out_dir refuses any other).

    `results` are eval.evaluate_run's dicts (their names unique); returns the path of report.md."""
    out_dir, names = Path(out_dir), [r["name"] for r in results]
    check_out_dir(out_dir, names)
    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_text_atomically(out_dir / MARK, json.dumps({"written_by": "eval.py", "files": report_files(names)},
                                                           indent=1) + "\n")
    for name, (plot, _) in FIGURES.items():
        plot(results, out_dir / name)
    for r in results:
        (out_dir / r["name"]).mkdir(exist_ok=True)
        files.write_text_atomically(out_dir / r["name"] / "metrics.json", json.dumps(r, indent=1))
    return write_report(results, out_dir, cfg, data_note)


def heldout_note(heldout_path, eval_tokens: int, seq_len: int, tokenizer_name: str, trained_on) -> str:
    """The report's paragraph on the held-out tokens; `trained_on`: each run's training data dir (None: unknown).
    Paths are shown relative to the repository."""
    note = (f"Held-out tokens: the first {eval_tokens} tokens of `{files.repo_relative(heldout_path)}`, in windows "
            f"of {seq_len} tokens, the same for every run (tokenizer {tokenizer_name}).")
    shown = {files.repo_relative(d) if d else "unknown" for d in trained_on}
    if len(shown) > 1:
        note += f" Note: the runs were trained on different data ({', '.join(sorted(shown))})."
    return note


def _fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def write_report(results, out_dir, cfg, data_note: str) -> Path:
    """OUT_DIR/report.md: a summary table (one row per run), one table per run, the figures, how it is measured.

    `cfg` is eval.py's EvalConfig (anything with num_pairs, probe_window, probe_l2, mc_normalization and
    mc_context_lines), for the settings the last section states; `data_note` is the paragraph under the title
    saying which held-out tokens were used. Run directories are shown relative to the repository."""
    out_dir = Path(out_dir)
    rows = ["| run | objective | steps | val loss | eff. rank (final) | avg cos (final) | probe acc ± se (majority) "
            "| MC acc ± se (chance) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        probe = mc = "-"
        if "probe" in r:
            p = r["probe"]
            probe = f"{_fmt(p['accuracy'])} ± {_fmt(p['stderr'])} ({_fmt(p['majority_baseline'])})"
        if "mc" in r:
            mc = f"{_fmt(r['mc']['accuracy'])} ± {_fmt(r['mc']['stderr'])} ({_fmt(r['mc']['chance'], '.2f')})"
        rows.append(f"| {r['name']} | {r['objective']} | {r['step']} | {_fmt(r[metrics.VAL_LOSS])} | "
                    f"{r[metrics.EFFECTIVE_RANK]:.1f} / {r['effective_rank_max']} | {r[metrics.AVG_COSINE]:.3f} | "
                    f"{probe} | {mc} |")
    lines = [TITLE, "", data_note, "", *rows, ""]
    for r in results:
        layer_ranks = ", ".join(f"{layer['name']} {layer[metrics.EFFECTIVE_RANK]:.1f}" for layer in r["layers"])
        lines += [f"### {r['label']}", "", "| metric | value |", "|---|---|",
                  f"| run dir | `{r['run_dir']}` |",
                  f"| val loss (eval.py / last log eval) | {_fmt(r[metrics.VAL_LOSS], '.4f')} / "
                  f"{_fmt(r['val_loss_log'], '.4f')} |",
                  f"| effective rank by layer | {layer_ranks} |"]
        if "probe" in r:
            p = r["probe"]
            lines.append(f"| probe | {p['n_train']} train / {p['n_test']} test passages of {p['passage_tokens']} "
                         f"tokens, classes {', '.join(p['classes'])} |")
        if "mc" in r:
            lines.append(f"| multiple choice | {r['mc']['n']} questions, normalisation: "
                         f"{r['mc']['normalization']} |")
        lines.append("")
    lines += ["## Figures", ""] + [f"![{caption}]({name})\n\n*{caption}*\n" for name, (_, caption) in FIGURES.items()]
    lines += ["## How these numbers are measured", "",
              "* **Effective rank**: mean-centre the representations, eigenvalues of their covariance, normalised to a "
              "distribution p, exp(entropy(p)); shown with its maximum min(N - 1, d). **Average cosine**: "
              f"{cfg.num_pairs} random pairs of distinct tokens, each vector L2-normalised. Final = after the "
              "final norm (the unembedding's input).",
              "* **Spectra**: singular values of the mean-centred representations, divided by the largest.",
              "* **Probe** (frozen, no fine-tuning): mean-pooled, L2-normalised last hidden states of "
              f"passages of {cfg.probe_window} tokens (or block_size if shorter); multinomial logistic regression "
              f"(LBFGS, L2 {cfg.probe_l2}). Built-in "
              "task: genre of the play, whole val plays held out; 'roman' plays count as tragedies, 'problem' plays "
              "and romances are dropped. Majority = accuracy of always predicting the most frequent test class.",
              "* **Multiple choice**: argmax of the log-likelihood of each choice given the context, divided by the "
              f"choice's length ({cfg.mc_normalization}; 'char' = UTF-8 bytes, lm-eval's acc_norm). Built-in task: the "
              f"true next line of a held-out play after {cfg.mc_context_lines} lines of context vs 3 lines of the same "
              "play. ± is the binomial standard error sqrt(p(1-p)/n).", ""]
    path = out_dir / REPORT
    files.write_text_atomically(path, "\n".join(lines))
    return path
