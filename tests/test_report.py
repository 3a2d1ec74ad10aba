"""Tests for report.py: the five figures and report.md, drawn from hand-made per-run results.

No model and no checkpoint: each result dict has the shape eval.evaluate_run returns (test_eval.py checks the
two together end to end), with numbers chosen so that every line of the report can be checked exactly.
"""

import json
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

from support import files, metrics, report

LAYER_NAMES = ["embedding", "block 1", "block 2", "final norm"]
# the EvalConfig fields that write_report states: report.py takes any object that has them
CFG = SimpleNamespace(num_pairs=500, probe_window=16, probe_l2=1e-3, mc_normalization="char", mc_context_lines=4)


def fake_result(name, objective, run_dir, group=None, seed=0, steps=30, scored=True):
    """A per-run result as eval.evaluate_run returns it (run_dir relative to the repository): 4 layers of width 16,
    a log history of `steps`."""
    rng = np.random.default_rng(seed)
    layers = [{"name": layer, metrics.EFFECTIVE_RANK: 4.0 + 3 * depth,
               "singular_values": sorted((rng.random(16) * 10 + 0.1).tolist(), reverse=True)}
              for depth, layer in enumerate(LAYER_NAMES)]
    history = {"eval": [{"step": s, metrics.VAL_LOSS: 5.0 - s / 20, metrics.EFFECTIVE_RANK: 8 + s / 4,
                         metrics.AVG_COSINE: 0.5 - s / 100, metrics.TARGET_EFFECTIVE_RANK: None}
                        for s in range(0, steps, 5)],
               "train_aux": [[s, 0.3 + 0.5 * np.exp(-s / 5) + 0.05 * rng.random()] for s in range(steps)]
               if objective != "ntp" else []}
    result = {"run_dir": files.repo_relative(run_dir), "name": name, "label": f"{name} ({objective})",
              "objective": objective,
              "group": group or name, "step": steps, metrics.VAL_LOSS: 4.0, "val_loss_log": 4.25,
              metrics.EFFECTIVE_RANK: 12.0, "effective_rank_max": 15, metrics.AVG_COSINE: 0.3, "layers": layers,
              "history": history}
    if scored:
        result["probe"] = {"accuracy": 0.75, "stderr": 0.05, "majority_baseline": 1 / 3, "n_train": 60, "n_test": 12,
                           "passage_tokens": 16, "classes": ["comedy", "history", "tragedy"]}
        result["mc"] = {"accuracy": 0.5, "stderr": 0.1, "chance": 0.25, "n": 8, "normalization": "char"}
    return result


@pytest.fixture
def results(tmp_path):
    """Two seeds of NITP (one group) and one NTP run, their dirs absolute paths outside the repository."""
    return [fake_result("ntp", "ntp", tmp_path / "runs" / "ntp", seed=0, scored=False),
            fake_result("seed0-nitp", "nitp", tmp_path / "runs" / "seed0" / "nitp", group="nitp", seed=1),
            fake_result("seed1-nitp", "nitp", tmp_path / "runs" / "seed1" / "nitp", group="nitp", seed=2)]


def png_height(path):
    return int.from_bytes(path.read_bytes()[20:24], "big")  # the PNG header's IHDR height


# ---------------------------------------------------------------------------- figures
def test_write_all_draws_every_figure_and_writes_metrics_and_report(tmp_path, results):
    out = tmp_path / "report"
    path = report.write_all(results, out, CFG, "Held-out tokens: a note.")
    assert path == out / "report.md" and path.read_text().startswith("# NITP evaluation report\n\nHeld-out tokens")
    for name in report.FIGURES:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 15_000, name  # a drawn figure, not an empty canvas
    for r in results:
        assert json.loads((out / r["name"] / "metrics.json").read_text()) == r


def test_figures_without_nitp_runs_or_history_still_draw(tmp_path, results):
    ntp_only = [results[0]]
    ntp_only[0]["history"]["eval"] = []
    for name, (plot, _) in report.FIGURES.items():
        assert plot(ntp_only, tmp_path / name) == str(tmp_path / name) and (tmp_path / name).stat().st_size > 0


def test_aux_loss_figure_has_one_panel_per_objective(tmp_path, results):
    """NITP's and MTP's losses are different quantities: each objective gets its own panel (and y-axis)."""
    report.plot_aux_loss(results, tmp_path / "one.png")
    peers = results + [fake_result("mtp", "mtp", tmp_path / "runs" / "mtp", seed=3)]
    report.plot_aux_loss(peers, tmp_path / "two.png")
    assert png_height(tmp_path / "two.png") > 1.8 * png_height(tmp_path / "one.png")


def test_aux_loss_panels_split_nitp_loss_types(tmp_path, results):
    """An MSE against raw residual streams (thousands) and a cosine loss (< 1) never share an axis."""
    mse = fake_result("mse", "nitp", tmp_path / "runs" / "mse", seed=4)
    mse["aux_loss_type"] = "mse"
    assert [report.aux_quantity(r) for r in results + [mse]] == ["ntp", "nitp", "nitp", "nitp, mse"]
    report.plot_aux_loss(results, tmp_path / "one.png")
    report.plot_aux_loss(results + [mse], tmp_path / "two.png")
    assert png_height(tmp_path / "two.png") > 1.8 * png_height(tmp_path / "one.png")


def test_legend_has_one_entry_per_group(results):
    assert report._legend_labels(results) == ["ntp (ntp)", "nitp (nitp, 2 runs)", "_nolegend_"]


def test_styles_share_a_colour_within_a_group_and_differ_by_dashes(results):
    ntp, seed0, seed1 = report._styles(results)
    assert seed0["color"] == seed1["color"] != ntp["color"]
    assert seed0["ls"] != seed1["ls"]


def test_styles_beyond_ten_groups_keep_every_colour_distinct(tmp_path):
    runs = [fake_result(f"v{i}", "nitp", tmp_path / f"v{i}", seed=i) for i in range(12)]
    assert len({style["color"] for style in report._styles(runs)}) == 12


def test_variants_figure_draws_each_metric_and_hides_spare_panels(tmp_path):
    """compare.aggregate's summary shape: 4 metrics on a 2 x 3 grid, a reference band, a variant without values."""
    def entry(label, **means):
        return {"label": label, **{v: {"values": [m - 0.1, m, m + 0.1], "mean": m, "std": 0.1}
                                   for v, m in means.items()}}
    summary = {"variants": ["ntp", "nitp", "mse"], "against": ["ntp", "nitp"], "seeds": 3,
               "metrics": {"val_loss": entry("val loss", ntp=5.0, nitp=5.1, mse=7.0),
                           "effective_rank": entry("rank", ntp=16.0, nitp=17.0, mse=1.5),
                           "avg_cosine": entry("cosine", ntp=0.2, nitp=0.2, mse=0.9),
                           "final_val_aux_loss": entry("aux", nitp=0.3, mse=3000.0),
                           "probe_accuracy": entry("probe")}}
    assert report.plot_variants(summary, tmp_path / "all.png") == str(tmp_path / "all.png")
    keys = ["val_loss", "effective_rank", "avg_cosine", "probe_accuracy"]
    report.plot_variants(summary, tmp_path / "three.png", keys)
    # four metrics with values: two rows of three panels; three (probe has none): one row
    assert png_height(tmp_path / "all.png") > 1.6 * png_height(tmp_path / "three.png")
    assert report._spans_decades([0.2, 0.4, 3000.0]) and not report._spans_decades([-0.1, 0.2, 30.0])


def test_moving_average_is_centred_and_shrinks_at_the_ends():
    ramp = np.arange(10.0)
    assert np.allclose(report._moving_average(ramp, 3), ramp)  # symmetric windows: no lag on a straight line
    assert np.allclose(report._moving_average([1.0, 5.0, 3.0], 0), [1.0, 5.0, 3.0])
    assert np.allclose(report._moving_average([0.0, 3.0, 0.0, 3.0], 1), [0.0, 1.0, 2.0, 3.0])


# ---------------------------------------------------------------------------- report.md
def test_report_rows_show_every_metric_and_dashes_for_what_did_not_run(tmp_path, results):
    text = report.write_report(results, tmp_path, CFG, "note").read_text()
    assert "| ntp | ntp | 30 | 4.000 | 12.0 / 15 | 0.300 | - | - |" in text  # probe and MC off
    assert ("| seed0-nitp | nitp | 30 | 4.000 | 12.0 / 15 | 0.300 | 0.750 ± 0.050 (0.333) | 0.500 ± 0.100 (0.25) |"
            in text)
    assert "| val loss (eval.py / last log eval) | 4.0000 / 4.2500 |" in text
    assert "| effective rank by layer | embedding 4.0, block 1 7.0, block 2 10.0, final norm 13.0 |" in text
    assert "| probe | 60 train / 12 test passages of 16 tokens, classes comedy, history, tragedy |" in text
    assert "500 random pairs" in text and "passages of 16 tokens" in text and "after 4 lines of context" in text
    assert all(f"]({name})" in text for name in report.FIGURES)


def test_report_shows_paths_relative_to_the_repository_never_absolute(tmp_path, results):
    inside = fake_result("in-repo", "ntp", files.REPO_DIR + "/out/in-repo")
    note = report.heldout_note(tmp_path / "data" / "val.bin", 200, 16, "gpt2", [tmp_path / "data"] * 3)
    text = report.write_report(results + [inside], tmp_path, CFG, note).read_text()
    # from the repo to pytest's tmp dir the relative path is "../../tmp/...": the tmp path may only follow a ".."
    assert not re.search(r"(?<![\w.])" + re.escape(str(tmp_path)), text)
    assert not re.search(r"(?<![\w.])" + re.escape(files.REPO_DIR), text)
    shown = re.findall(r"\| run dir \| `([^`]*)` \|", text)
    assert shown[-1] == "out/in-repo"
    runs = [tmp_path / "runs" / d for d in ("ntp", "seed0/nitp", "seed1/nitp")]
    assert [os.path.normpath(files.from_repo(p)) for p in shown[:-1]] == [str(r) for r in runs]  # they lead back
    assert f"`{files.repo_relative(tmp_path / 'data' / 'val.bin')}`" in text


def test_heldout_note_flags_runs_trained_on_different_data(tmp_path):
    same = report.heldout_note(tmp_path / "val.bin", 200, 16, "gpt2", [tmp_path / "a", tmp_path / "a"])
    assert same == (f"Held-out tokens: the first 200 tokens of `{files.repo_relative(tmp_path / 'val.bin')}`, "
                    "in windows of 16 tokens, the same for every run (tokenizer gpt2).")
    different = report.heldout_note(tmp_path / "val.bin", 200, 16, "gpt2", [tmp_path / "a", tmp_path / "b", None])
    assert different.startswith(same) and "trained on different data" in different
    assert f"{files.repo_relative(tmp_path / 'a')}, {files.repo_relative(tmp_path / 'b')}, unknown)" in different
