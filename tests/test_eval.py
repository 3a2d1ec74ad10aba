"""Tests for eval.py: collection, probe, multiple-choice scorer, per-run evaluation, the CLI end to end, errors.

The metrics themselves are tested in test_metrics.py, the figures and report.md alone in test_report.py.
Tiny shapes throughout. The end-to-end test builds its own run directories (a tiny GPT checkpoint in
the contract format, a synthetic log.jsonl, a tiny val data dir) so it does not need train.py, and a
character-level fake tokenizer + fake plays so it needs neither the GPT-2 BPE files nor the corpus. The
tasks themselves (and those fakes) are tested in test_tasks.py.
"""

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
from test_tasks import FAKE_PLAYS, CharTokenizer

import eval as ev
import model as model_lib
from support import checkpoint, files, report, shakespeare
from support import tokenizer as tokenizer_lib


# ---------------------------------------------------------------------------- helpers
def tiny_config(**overrides):
    config = dataclasses.replace(model_lib.get_preset("tiny-dense"), vocab_size=128, block_size=16, n_layer=2,
                                 d_model=32, n_head=2, n_kv_head=1, head_dim=None, d_ff=64)
    return dataclasses.replace(config, **overrides)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return model_lib.GPT(tiny_config(**overrides)).eval()


def write_run(run_dir, objective, data_dir, seed=0, tokenizer="gpt2", steps=40, relative_data_dir=True,
              target_layer=None):
    """A run directory in the contract format, as train.py would leave it: data_dir stored relative to the
    repository (relative_data_dir=False: an absolute path, as older checkpoints hold)."""
    run_dir.mkdir(parents=True)
    gpt = tiny_model(seed)
    stored_data_dir = files.repo_relative(data_dir) if relative_data_dir else str(data_dir)
    train_config = {"objective": objective, "max_steps": steps, "data_dir": stored_data_dir,
                    "target_layer": target_layer, "loss_type": "cosine"}
    checkpoint.save(run_dir, steps, {"model": {f"{checkpoint.MODEL_KEY}.{k}": v for k, v in gpt.state_dict().items()}},
                    {"model_config": gpt.config.to_dict(), "train_config": train_config, "tokenizer": tokenizer,
                     "data_dir": stored_data_dir})
    lines = [{"kind": "config", "train_config": train_config, "model_config": gpt.config.to_dict()}]
    for step in range(steps):
        train = {"kind": "train", "step": step, "loss": 5.0 - 0.05 * step}
        if objective == "nitp":
            train["loss_nitp"] = 0.3 + 0.5 * math.exp(-step / 5) + 0.1 * math.sin(step)
        lines.append(train)
        if step % 10 == 0:
            lines.append({"kind": "eval", "step": step, "val_loss": 5.0 - 0.04 * step, "avg_cosine": 0.5 - step / 200,
                          "effective_rank": 10 + step / (4 if objective == "nitp" else 8)}
                         | ({"val_loss_nitp": 0.4 - step / 1000} if objective == "nitp" else {}))
    (run_dir / "log.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return run_dir


@pytest.fixture
def data_dir(tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    tokens = np.random.default_rng(0).integers(0, 128, size=300).astype(np.uint16)
    tokens.tofile(directory / "val.bin")
    tokens.tofile(directory / "train.bin")
    (directory / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 128, "eot_token": 127,
                                                     "train_tokens": 300, "val_tokens": 300}))
    return directory


# ---------------------------------------------------------------------------- collection
def test_collection_gathers_every_layer_for_every_token_and_the_val_loss():
    gpt = tiny_model()
    tokens = np.random.default_rng(1).integers(0, 128, size=41).astype(np.uint16)  # 40 targets: 2 full windows + 8
    reps, val_loss = ev.collect_representations(gpt, tokens, max_tokens=1000, seq_len=16, batch_size=4)
    assert list(reps) == ["embedding", "block 1", "block 2", "final norm"]
    assert all(X.shape == (40, 32) for X in reps.values())
    x = torch.as_tensor(tokens.astype(np.int64))
    with torch.no_grad():
        full = gpt(x[None, :16], layers=(0, 1, 2))  # causal: the first window alone gives the same states
    assert torch.allclose(reps["final norm"][:16], full.final_hidden[0], atol=1e-5)
    assert torch.allclose(reps["block 1"][:16], full.layers[1][0], atol=1e-5)
    losses = []
    with torch.no_grad():
        for s, length in ((0, 16), (16, 16), (32, 8)):
            logits = gpt(x[None, s:s + length]).logits[0]
            losses.append(torch.nn.functional.cross_entropy(logits, x[s + 1:s + length + 1], reduction="sum"))
    assert val_loss == pytest.approx(sum(losses).item() / 40, rel=1e-5)
    reps, _ = ev.collect_representations(gpt, tokens, max_tokens=10, seq_len=16)
    assert reps["final norm"].shape == (10, 32)  # memory bound respected


def test_embed_sequences_pools_real_tokens_only_and_normalises():
    gpt = tiny_model()
    short, long = [5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9]
    batched = ev.embed_sequences(gpt, [short, long], batch_size=2)
    alone = ev.embed_sequences(gpt, [short], batch_size=1)
    assert torch.allclose(batched[0], alone[0], atol=1e-5)  # right padding does not leak into the pool
    assert torch.allclose(batched.norm(dim=1), torch.ones(2), atol=1e-5)


# ---------------------------------------------------------------------------- probe
def test_probe_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0]])
    def sample(n):
        y = torch.arange(n) % 2
        return centres[y] + 0.3 * torch.randn(n, 4, generator=g), y
    (train_x, train_y), (test_x, test_y) = sample(60), sample(40)
    result = ev.train_linear_probe(train_x, train_y, test_x, test_y, num_classes=2)
    assert result["accuracy"] == 1.0 and result["majority_baseline"] == 0.5


def test_probe_is_at_chance_on_random_labels():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(200, 8, generator=g), torch.randn(400, 8, generator=g)
    train_y, test_y = torch.randint(0, 2, (200,), generator=g), torch.randint(0, 2, (400,), generator=g)
    result = ev.train_linear_probe(train_x, train_y, test_x, test_y, num_classes=2)
    # with no signal, test accuracy ~ Binomial(400, 1/2) / 400: sd 0.025, so +-0.1 is a 4-sigma band
    assert abs(result["accuracy"] - 0.5) < 0.1


# ---------------------------------------------------------------------------- multiple choice
def char_loglikelihood(pairs):
    """Fake scorer: every character is one token; 'a' costs 1 nat, anything else 2 nats."""
    return [(-sum(1.0 if c == "a" else 2.0 for c in cont), len(cont)) for _, cont in pairs]


def test_mc_scorer_picks_the_favoured_choice_and_length_normalisation_matters():
    questions = [{"context": "q", "choices": ["aaaa", "b"], "answer": 0},  # sum: -4 vs -2; per token: -1 vs -2
                 {"context": "q", "choices": ["bb", "a"], "answer": 1}]    # a wins under every normalisation
    for normalization in ("token", "char"):
        result = ev.score_multiple_choice(questions, char_loglikelihood, normalization)
        assert result["accuracy"] == 1.0 and result["stderr"] == 0.0 and result["chance"] == 0.5
    raw = ev.score_multiple_choice(questions, char_loglikelihood, "none")
    assert raw["accuracy"] == 0.5 and raw["stderr"] == pytest.approx(math.sqrt(0.25 / 2))
    with pytest.raises(ValueError, match="normalization"):
        ev.score_multiple_choice(questions, char_loglikelihood, "bytes")


def test_model_loglikelihood_is_exact_and_independent_of_batching():
    gpt = tiny_model()
    score = ev.model_loglikelihood(gpt, CharTokenizer(), batch_size=3)
    pairs = [("Hello", " world"), ("ab", "c"), ("", "xyz")]
    batched = score(pairs)
    assert [n for _, n in batched] == [6, 1, 3]
    assert [round(lp, 4) for lp, _ in batched] == [round(lp, 4) for pair in pairs for lp, _ in score([pair])]
    ids = [ord(c) for c in "Hello world"]
    with torch.no_grad():
        logprobs = torch.log_softmax(gpt(torch.tensor([ids])).logits[0], -1)
    expected = sum(logprobs[p - 1, ids[p]].item() for p in range(5, 11))
    assert batched[0][0] == pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------------------- end to end
def test_report_writes_figures_report_and_metrics(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(tokenizer_lib, "get_tokenizer", CharTokenizer)
    monkeypatch.setattr(shakespeare, "shakespeare_plays", lambda: FAKE_PLAYS)
    runs = [write_run(tmp_path / "ntp", "ntp", data_dir, seed=0),
            write_run(tmp_path / "nitp", "nitp", data_dir, seed=1)]
    out = tmp_path / "report"
    assert ev.main([str(r) for r in runs] + [f"--out={out}", "--max_tokens=200", "--num_mc=8", "--device=cpu",
                                             "--probe_window=16", "--probe_per_play=4", "--num_pairs=500"]) == 0
    results = [json.loads((out / name / "metrics.json").read_text()) for name in ("ntp", "nitp")]
    for name in report.FIGURES:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 15_000, name  # a drawn figure, not an empty canvas
    text = (out / "report.md").read_text()
    assert "| ntp | ntp | 40 |" in text and "| nitp | nitp | 40 |" in text
    assert all(f"]({name})" in text for name in report.FIGURES)
    # no absolute path of the machine: the held-out data and the run dirs are shown relative to the repository
    # (from the repo to pytest's tmp dir that is "../../tmp/...": the tmp path may only follow a "..")
    assert not re.search(r"(?<![\w.])" + re.escape(str(tmp_path)), text)
    assert f"`{files.repo_relative(data_dir / 'val.bin')}`" in text and f"`{files.repo_relative(runs[1])}`" in text
    metrics = json.loads((out / "nitp" / "metrics.json").read_text())
    assert metrics["objective"] == "nitp" and metrics["eval_tokens"] == 200 and metrics["mc"]["n"] == 8
    assert 1.0 <= metrics["effective_rank"] <= 32 and len(metrics["layers"]) == 4
    assert metrics["probe"]["classes"] == ["comedy", "history", "tragedy"]
    assert results[0]["history"]["train_aux"] == [] and len(results[1]["history"]["train_aux"]) == 40
    assert results[0]["aux_loss_type"] is None and results[1]["aux_loss_type"] == "cosine"  # NITP's only
    assert ev.main([str(tmp_path / "nothing"), f"--out={out}"]) == 2  # one line, no traceback


def test_a_rerun_replaces_eval_s_own_report_and_only_that(tmp_path, data_dir):
    """A second eval.py into its own report folder (compare.py reruns into runs/compare/report) replaces it and
    keeps the user's other files; the folder is known as eval.py's by its mark, or, for a report written before
    the mark, by report.md's title; a report.md of the user's is refused (tests/test_faults_tools.py, end to end)."""
    run = write_run(tmp_path / "ntp", "ntp", data_dir)
    out = tmp_path / "report"
    argv = [str(run), f"--out={out}", "--max_tokens=100", "--num_pairs=200", "--probe=false", "--mc=false",
            "--device=cpu"]
    assert ev.main(argv) == 0
    (out / "NOTES.md").write_text("the user's own file")
    assert ev.main(argv) == 0
    assert (out / "NOTES.md").read_text() == "the user's own file"
    assert json.loads((out / report.MARK).read_text())["files"] == report.report_files(["ntp"])
    (out / report.MARK).unlink()  # as an earlier eval.py left it
    report.check_out_dir(out, ["ntp"])
    (out / "report.md").write_text("# My own report\n")
    with pytest.raises(ValueError, match=r"holds report.md, spectra_final.png, spectra_layers.png and 4 more, which "
                                         r"eval.py did not write \(no nitp_report.json\)"):
        report.check_out_dir(out, ["ntp"])


# ---------------------------------------------------------------------------- errors
def test_run_without_checkpoint_or_log_is_a_clear_error(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint.*train\.py"):
        ev.load_run(tmp_path / "nothing")
    run = write_run(tmp_path / "run", "ntp", data_dir)
    (run / "log.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"log\.jsonl"):
        ev.load_run(run)


def test_runs_with_different_tokenizers_are_refused(tmp_path, data_dir):
    runs = [ev.load_run(write_run(tmp_path / "a", "ntp", data_dir)),
            ev.load_run(write_run(tmp_path / "b", "nitp", data_dir, tokenizer="qwen2"))]
    with pytest.raises(ValueError, match="different tokenizers"):
        ev.check_same_tokenizer(runs)


def test_cli_options_are_eval_config_fields_with_strict_booleans():
    args = ev._parser().parse_args(["run", "--out=rep", "--probe=false", "--seq_len=none", "--max_tokens=64"])
    assert args.probe is False and args.seq_len is None and args.max_tokens == 64 and args.mc is True
    with pytest.raises(SystemExit):
        ev._parser().parse_args(["run", "--out=rep", "--probe=flase"])
    # "none" is None only for an optional field: a str option keeps it (mc_normalization="none" is a choice)
    assert ev._parser().parse_args(["run", "--out=rep", "--mc_normalization=none"]).mc_normalization == "none"
    with pytest.raises(SystemExit):
        ev._parser().parse_args(["run", "--out=rep", "--max_tokens=none"])


def test_device_is_resolved_by_runtime():
    assert ev._resolve_device(ev.EvalConfig(device="cpu")).device == "cpu"
    assert ev._resolve_device(ev.EvalConfig()).device in ("cpu", "cuda:0")  # auto
    with pytest.raises(ValueError, match="not a device"):
        ev._resolve_device(ev.EvalConfig(device="gpu"))


@pytest.mark.parametrize("relative_data_dir", [True, False], ids=["repo-relative", "absolute (older checkpoints)"])
def test_evaluate_run_is_callable_on_a_run_dir_alone(tmp_path, data_dir, relative_data_dir):
    run = write_run(tmp_path / "nitp", "nitp", data_dir, relative_data_dir=relative_data_dir)
    cfg = ev.EvalConfig(max_tokens=100, num_pairs=200, probe=False, mc=False, device="cpu")
    metrics = ev.evaluate_run(run, cfg)  # held-out tokens from the checkpoint's data_dir
    assert metrics["eval_tokens"] == 100 and metrics["step"] == 40 and "probe" not in metrics
    assert metrics["val_loss"] == pytest.approx(math.log(128), abs=0.5)  # an untrained model is ~uniform
    json.dumps(metrics)  # JSON-ready, as metrics.json needs


@pytest.mark.parametrize("objective, target_layer, expected", [("nitp", -1, 2), ("nitp", 1, 1), ("ntp", None, 1)])
def test_evaluate_run_reports_the_target_layers_geometry_and_the_last_held_out_aux_loss(
        tmp_path, data_dir, objective, target_layer, expected):
    """The ablation table reads the geometry of the layer NITP targets (the run's own, resolved like train.py does;
    the preset's default for NTP: tiny-dense's, after block 1) and the aux loss of the last eval line."""
    run = write_run(tmp_path / objective, objective, data_dir, target_layer=target_layer)
    metrics = ev.evaluate_run(run, ev.EvalConfig(max_tokens=100, num_pairs=200, probe=False, mc=False, device="cpu"))
    layers = metrics["layers"]
    assert [layer["name"] for layer in layers] == ["embedding", "block 1", "block 2", "final norm"]
    assert metrics["target_layer"] == expected
    assert metrics["target_effective_rank"] == layers[expected]["effective_rank"]
    assert metrics["target_avg_cosine"] == layers[expected]["avg_cosine"]
    assert metrics["avg_cosine"] == layers[-1]["avg_cosine"]
    assert len({layer["avg_cosine"] for layer in layers}) == 4  # measured per layer, not one value copied
    assert metrics["final_val_aux_loss"] == (pytest.approx(0.4 - 30 / 1000) if objective == "nitp" else None)


def test_runs_are_named_by_their_folder_and_never_two_alike(tmp_path):
    """NAME/metrics.json and the report row: the folder's name, its parent's too where two folders share a name; two
    runs that would still share one are refused (one metrics.json would replace the other)."""
    assert ev.run_names(["c/seed1/ntp", "c/seed2/ntp", "c/seed1/nitp"]) == ["seed1-ntp", "seed2-ntp", "nitp"]
    with pytest.raises(ValueError, match=r"^a/run and ./a/run would both be reported as 'run' \(the same run, given "
                                         r"twice\), .*; give each run once$"):
        ev.run_names(["a/run", "./a/run"])
    with pytest.raises(ValueError, match=r"^g1/s/x and g2/s/x would both be reported as 's-x' \(their folders and "
                                         r"their parents have the same names\)"):
        ev.run_names(["g1/s/x", "g2/s/x"])


def test_a_data_folder_prepared_again_with_another_vocabulary_is_named_as_such(tmp_path, data_dir, capsys):
    """The run's own data folder, now of another vocabulary: it was prepared again (pointing at that very folder as
    the data the run was trained on would send the user in a circle)."""
    run = write_run(tmp_path / "ntp", "ntp", data_dir, tokenizer="gpt2-compact-0123abcd")
    out = tmp_path / "report"
    assert ev.main([str(run), f"--out={out}", "--probe=false", "--mc=false", "--device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()
    assert f"{data_dir.resolve()} was prepared again after training, so its ids are not the run's" in err
    assert "use the data it was trained on" not in err
