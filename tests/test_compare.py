"""Tests for compare.py: flag parsing, variant flags, the seed aggregation, and one tiny end-to-end run."""

import json
import re
import statistics

import pytest

import config
from tools import compare


def test_parse_splits_own_flags_from_train_flags():
    cfg = compare.parse_args(["--seeds=3", "--variants=ntp,nitp,mse", "--max_steps=40", "--preset=tiny-dense",
                              "--seq_len=32"])
    assert cfg.seeds == 3 and compare.variant_names(cfg) == ["ntp", "nitp", "mse"]
    assert cfg.train_args == ("--max_steps=40", "--preset=tiny-dense", "--seq_len=32")


# one bad flag each -> the phrase its error must contain
BAD_FLAG_MESSAGES = {
    "--variants=ntp,nitpp": "unknown variant(s) nitpp", "--variants=ntp,ntp": "lists a name twice",
    "--seeds=0": "--seeds must be >= 1", "--seeds=two": "'seeds' expects int",
    "--objective=ntp": "set by compare.py", "seeds=3": "expected --key=value",
    "--against=mse": "--against names mse, which --variants does not run",
}


@pytest.mark.parametrize("flag", list(BAD_FLAG_MESSAGES))
def test_bad_flags_are_named(flag):
    with pytest.raises(ValueError, match=re.escape(BAD_FLAG_MESSAGES[flag])):
        compare.parse_args([flag])


def test_train_flags_variant_then_user_then_run():
    cfg = compare.parse_args(["--preset=tiny-dense", "--n_layer=5", "--seq_len=32"])
    flags = compare.train_flags(cfg, "deep_target", 7, compare.Path("out/x"))
    assert flags == ["--objective=nitp", "--target_layer=-2", "--preset=tiny-dense", "--n_layer=5", "--seq_len=32",
                     "--seed=7", "--out_dir=out/x"]
    assert compare.train_flags(compare.parse_args([]), "shift0", 1, compare.Path("o"))[:2] == [
        "--objective=nitp", "--shift=0"]


@pytest.mark.parametrize("user_flags, n_layer", [
    ([], 6),                                      # the default preset "small"
    (["--preset=tiny-dense", "--n_layer=5", "--seq_len=64"], 5),  # a depth override
    (["--preset=gpt2-124m"], 12),                 # a preset with its own (shallow) target layer
    (["--preset=9bA1b"], 24),
    (["CONFIG_FILE"], 7),                         # the depth set in a config file
])
def test_deep_target_is_the_last_block_but_one_for_any_preset_depth_or_file(tmp_path, user_flags, n_layer):
    """deep_target is n_layer - 1 (the deepest strict prefix), resolved by train.py for the model it builds."""
    config_file = tmp_path / "run.toml"
    config_file.write_text('preset = "tiny-moe"\nn_layer = 7\nseq_len = 64\n')
    user_flags = [f"--config={config_file}" if f == "CONFIG_FILE" else f for f in user_flags]
    flags = compare.train_flags(compare.parse_args(user_flags), "deep_target", 1, tmp_path / "run")
    cfg, mcfg = config.resolve_config(config.parse_config(flags))
    assert mcfg.n_layer == n_layer and cfg.target_layer == n_layer - 1


def _fake_result(variant, seed, **metrics):
    return {"variant": variant, "seed": seed, **metrics}


def test_aggregate_mean_std_and_spread_verdict():
    cfg = compare.parse_args(["--seeds=3"])
    results = [_fake_result("ntp", 0, val_loss=5.0, effective_rank=10.0),
               _fake_result("nitp", 0, val_loss=5.1, effective_rank=20.0),
               _fake_result("ntp", 1, val_loss=5.2, effective_rank=11.0),
               _fake_result("nitp", 1, val_loss=5.0, effective_rank=21.0),
               _fake_result("ntp", 2, val_loss=5.1, effective_rank=12.0),
               _fake_result("nitp", 2, val_loss=5.2, effective_rank=22.0)]
    summary = compare.aggregate(results, cfg)
    rank = summary["metrics"]["effective_rank"]
    assert rank["ntp"]["mean"] == pytest.approx(11.0) and rank["ntp"]["std"] == pytest.approx(1.0)
    assert rank["nitp"]["vs"]["ntp"]["diff"] == pytest.approx(10.0) and rank["ntp"]["vs"] == {}
    assert rank["nitp"]["vs"]["ntp"]["same_sign_seeds"] == 3 and rank["nitp"]["vs"]["ntp"]["exceeds_spread"] is True
    loss = summary["metrics"]["val_loss"]["nitp"]["vs"]["ntp"]
    assert loss["diff"] == pytest.approx(0.0, abs=1e-12)
    assert loss["exceeds_spread"] is False  # |0.0| < 0.1 + 0.1
    assert "probe_accuracy" in summary["metrics"] and "ntp" not in summary["metrics"]["probe_accuracy"]


def test_aggregate_single_seed_has_no_verdict():
    cfg = compare.parse_args([])
    summary = compare.aggregate([_fake_result("ntp", 0, avg_cosine=0.5), _fake_result("nitp", 0, avg_cosine=0.3)], cfg)
    entry = summary["metrics"]["avg_cosine"]["nitp"]
    assert entry["std"] is None and entry["vs"]["ntp"]["exceeds_spread"] is None
    assert entry["vs"]["ntp"]["diff"] == pytest.approx(-0.2)


def test_against_two_references_pairs_each_seed_and_skips_metrics_a_reference_lacks(tmp_path):
    """The ablation table compares every row with NTP and with NITP; NTP has no auxiliary loss to compare with."""
    cfg = compare.parse_args(["--seeds=2", "--variants=ntp,nitp,shift0", "--against=ntp,nitp"])
    aux = {"nitp": (0.30, 0.34), "shift0": (0.01, 0.02)}
    loss = {"ntp": (4.9, 5.4), "nitp": (5.0, 5.1), "shift0": (5.4, 5.5)}
    # results arrive in any order; the aggregation pairs them by seed
    results = [_fake_result(v, seed, val_loss=loss[v][seed], final_val_aux_loss=aux[v][seed] if v in aux else None)
               for v in ("shift0", "nitp", "ntp") for seed in (1, 0)]
    summary = compare.aggregate(results, cfg)
    shift0 = summary["metrics"]["val_loss"]["shift0"]["vs"]
    assert shift0["ntp"]["diff"] == pytest.approx(0.3) and shift0["nitp"]["diff"] == pytest.approx(0.4)
    assert shift0["nitp"]["same_sign_seeds"] == 2
    # spread: std(5.4, 5.5) + std(5.0, 5.1) = 2 * 0.0707 < 0.4
    assert shift0["nitp"]["exceeds_spread"] is True
    aux_entry = summary["metrics"]["final_val_aux_loss"]
    assert "ntp" not in aux_entry and set(aux_entry["shift0"]["vs"]) == {"nitp"}
    assert aux_entry["shift0"]["vs"]["nitp"]["diff"] == pytest.approx(-0.305)
    text = compare.write_summary(summary, tmp_path, 60.0).read_text()
    assert "| variant | mean ± std | against ntp | against nitp |" in text
    # against ntp: 0.3 < std 0.0707 + std 0.3536
    row = "| shift0 | 5.4500 ± 0.0707 | +0.3000 (2/2 seeds, within spread) | +0.4000 (2/2 seeds, **exceeds spread**) |"
    assert row in text


def test_step_overheads_paired_by_seed_against_the_flops_floor(tmp_path):
    cfg = compare.parse_args(["--seeds=3", "--variants=ntp,nitp,mtp"])
    speeds = {"ntp": (1000.0, 900.0, 1100.0), "nitp": (950.0, 850.0, 1050.0), "mtp": (500.0, 450.0, 550.0)}
    floors = {"ntp": 0.0, "nitp": 0.05, "mtp": 0.8}
    results = [{**_fake_result(v, seed), compare.TOKENS_PER_S: speeds[v][seed], compare.FLOPS_OVERHEAD: floors[v]}
               for seed in range(3) for v in speeds]
    summary = compare.aggregate(results, cfg)
    nitp, mtp = summary["step_overhead"]["nitp"], summary["step_overhead"]["mtp"]
    # per seed 1000/950, 900/850, 1100/1050: the median of the paired ratios, not the ratio of the means
    assert nitp["measured"] == pytest.approx(statistics.median([1000 / 950 - 1, 900 / 850 - 1, 1100 / 1050 - 1]))
    assert nitp["floor"] == pytest.approx(0.05) and nitp["seeds"] == 3
    assert mtp["measured"] == pytest.approx(1.0) and mtp["floor"] == pytest.approx(0.8)
    text = compare.write_summary(summary, tmp_path, 60.0).read_text()
    assert "nitp +5.3% (floor +5.0%); mtp +100.0% (floor +80.0%)" in text


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path, capsys):
    argv = [f"--out_dir={tmp_path}", "--seeds=2", "--preset=tiny-dense", "--max_steps=3", "--eval_batches=1",
            "--seq_len=32", "--batch_size=2", "--global_batch_tokens=64", "--eval_max_tokens=512"]
    assert compare.main(argv) == 0
    report = tmp_path / "report"
    for name in ("report.md", "summary.md", "summary.json"):
        assert (report / name).exists()
    assert len(list(report.glob("*.png"))) == 7  # eval's five and compare's variants.png and curves.png
    assert f"]({compare.VARIANTS_PNG})" in (report / "summary.md").read_text()
    assert f"]({compare.CURVES_PNG})" in (report / "summary.md").read_text()  # seeds 2: the curves are compared
    summary = json.loads((report / "summary.json").read_text())
    assert summary["variants"] == ["ntp", "nitp"]
    assert len(summary["metrics"]["val_loss"]["nitp"]["values"]) == 2
    overhead = summary["step_overhead"]["nitp"]  # from the runs' logs and their FLOPs accounting
    assert overhead["seeds"] == 2 and overhead["floor"] > 0
    assert "Training step time against `ntp`" in (report / "summary.md").read_text()
    # the same seed with the same objective is deterministic, so a rerun skips all four runs
    assert compare.main(argv) == 0
    assert capsys.readouterr().out.count("already trained with these flags: skipped") == 4


def test_differences_pair_runs_of_the_same_seed_only():
    """A reference missing a seed's value is not compared (never pairs seed 0 of one variant with seed 1 of another)."""
    cfg = compare.parse_args(["--seeds=2", "--variants=ntp,nitp"])
    results = [_fake_result("ntp", 0, val_loss=5.0, probe_accuracy=0.4), _fake_result("ntp", 1, val_loss=5.2),
               _fake_result("nitp", 1, val_loss=5.3, probe_accuracy=0.5), _fake_result("nitp", 0, val_loss=5.0)]
    summary = compare.aggregate(results, cfg)
    assert summary["metrics"]["val_loss"]["nitp"]["vs"]["ntp"]["same_sign_seeds"] == 1  # seed 1: +0.1, seed 0: 0
    assert summary["metrics"]["probe_accuracy"]["nitp"]["vs"] == {}  # ntp has seed 0's, nitp seed 1's


def _history_result(variant, seed, ranks: dict, val_loss=5.0):
    """A result with a log history: {step: effective rank} (steps missing from the dict were not logged)."""
    return {"variant": variant, "seed": seed, "val_loss": val_loss,
            "history": {"eval": [{"step": t, "val_loss": val_loss, "effective_rank": r} for t, r in ranks.items()]}}


def test_curves_part_where_the_one_sigma_bands_do_not_overlap(tmp_path):
    cfg = compare.parse_args(["--seeds=2", "--variants=ntp,nitp", "--against=ntp"])
    results = [_history_result("ntp", 0, {0: 1.0, 10: 10.0, 20: 20.0}),
               _history_result("ntp", 1, {0: 1.2, 10: 11.0, 20: 21.0}),
               _history_result("nitp", 0, {0: 1.1, 10: 14.0, 20: 30.0}),  # seed 1 did not log step 20
               _history_result("nitp", 1, {0: 1.1, 10: 15.0})]
    summary = compare.aggregate(results, cfg)
    rank = summary["curves"]["effective_rank"]
    assert rank["ntp"]["steps"] == [0, 10, 20] and rank["nitp"]["steps"] == [0, 10]  # steps every seed logged
    assert rank["nitp"]["mean"] == pytest.approx([1.1, 14.5]) and rank["nitp"]["std"][0] == pytest.approx(0.0)
    # step 0: |1.1 - 1.1| < 0 + 0.141; step 10: |14.5 - 10.5| > 0.707 + 0.707
    assert rank["nitp"]["apart"] == {"ntp": {"steps": [10], "of": 2}} and rank["ntp"]["apart"] == {}
    assert summary["curves"]["val_loss"]["nitp"]["apart"] == {"ntp": {"steps": [], "of": 2}}
    text = compare.write_summary(summary, tmp_path, 60.0).read_text()
    assert "* eff. rank, last hidden state: nitp 1 of 2 (10)" in text and "* val loss: nitp 0 of 2\n" in text
    assert (tmp_path / compare.CURVES_PNG).stat().st_size > 15_000


def test_curves_need_two_seeds_to_part():
    cfg = compare.parse_args(["--variants=ntp,nitp"])
    summary = compare.aggregate([_history_result("ntp", 0, {0: 1.0}), _history_result("nitp", 0, {0: 9.0})], cfg)
    assert summary["curves"]["effective_rank"]["nitp"]["apart"] == {}
