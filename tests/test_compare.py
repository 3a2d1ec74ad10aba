"""Tests for compare.py: flag parsing, variant flags, the seed aggregation, and one tiny end-to-end run."""

import json
import re

import pytest

import compare


def test_parse_splits_own_flags_from_train_flags():
    cfg = compare.parse_args(["--seeds=3", "--variants=ntp,nitp,mse", "--max_steps=40", "--preset=tiny-dense"])
    assert cfg.seeds == 3 and compare.variant_names(cfg) == ["ntp", "nitp", "mse"]
    assert cfg.train_args == ("--max_steps=40", "--preset=tiny-dense")


# one bad flag each -> the phrase its error must contain
BAD_FLAG_MESSAGES = {
    "--variants=ntp,nitpp": "unknown variant(s) nitpp", "--variants=ntp,ntp": "lists a name twice",
    "--seeds=0": "--seeds must be >= 1", "--seeds=two": "expects an integer",
    "--objective=ntp": "set by compare.py", "seeds=3": "expected --key=value",
}


@pytest.mark.parametrize("flag", list(BAD_FLAG_MESSAGES))
def test_bad_flags_are_named(flag):
    with pytest.raises(ValueError, match=re.escape(BAD_FLAG_MESSAGES[flag])):
        compare.parse_args([flag])


def test_train_flags_variant_then_user_then_run():
    cfg = compare.parse_args(["--preset=tiny-dense", "--n_layer=5"])
    flags = compare.train_flags(cfg, "deep_target", 7, compare.Path("out/x"))
    # deep target = n_layer - 1, from the user's --n_layer override (not the preset's 2 layers)
    assert flags == ["--objective=nitp", "--target_layer=4", "--preset=tiny-dense", "--n_layer=5", "--seed=7",
                     "--out_dir=out/x"]
    flags = compare.train_flags(compare.parse_args([]), "deep_target", 1, compare.Path("o"))
    assert "--target_layer=5" in flags  # the default preset "small" has 6 layers
    assert compare.train_flags(compare.parse_args([]), "shift0", 1, compare.Path("o"))[:2] == [
        "--objective=nitp", "--shift=0"]


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
    assert rank["nitp"]["diff"] == pytest.approx(10.0)
    assert rank["nitp"]["same_sign_seeds"] == 3 and rank["nitp"]["exceeds_spread"] is True
    loss = summary["metrics"]["val_loss"]
    assert loss["nitp"]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert loss["nitp"]["exceeds_spread"] is False  # |0.0| < 0.1 + 0.1
    assert "probe_accuracy" in summary["metrics"] and "ntp" not in summary["metrics"]["probe_accuracy"]


def test_aggregate_single_seed_has_no_verdict():
    cfg = compare.parse_args([])
    summary = compare.aggregate([_fake_result("ntp", 0, avg_cosine=0.5), _fake_result("nitp", 0, avg_cosine=0.3)], cfg)
    entry = summary["metrics"]["avg_cosine"]["nitp"]
    assert entry["std"] is None and entry["exceeds_spread"] is None and entry["diff"] == pytest.approx(-0.2)


@pytest.mark.slow
def test_end_to_end_tiny(tmp_path, capsys):
    argv = [f"--out_dir={tmp_path}", "--seeds=2", "--preset=tiny-dense", "--max_steps=3", "--eval_batches=1",
            "--seq_len=32", "--batch_size=2", "--global_batch_tokens=64", "--eval_max_tokens=512"]
    assert compare.main(argv) == 0
    report = tmp_path / "report"
    for name in ("report.md", "summary.md", "summary.json"):
        assert (report / name).exists()
    assert len(list(report.glob("*.png"))) == 5
    summary = json.loads((report / "summary.json").read_text())
    assert summary["variants"] == ["ntp", "nitp"]
    assert len(summary["metrics"]["val_loss"]["nitp"]["values"]) == 2
    # the same seed with the same objective is deterministic, so a rerun skips all four runs
    assert compare.main(argv) == 0
    assert capsys.readouterr().out.count("already trained with these flags: skipped") == 4
