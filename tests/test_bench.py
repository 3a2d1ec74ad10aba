"""Tests for bench.py: `--json` prints one object with the documented fields and sane values, the FLOPs
figures are flops.flops_per_token's, the config and its errors, the interleaving order, that an NTP step
does no NITP work and a NITP step does, and the GPU peak table. Tiny presets, a few rounds: the timings
themselves are noise here, so only their signs and their consistency with each other are checked."""

import json
import math

import pytest
import torch

import model as model_lib
from support import flops, peers
from tools import bench

TINY = ["--device=cpu", "--rounds=3", "--warmup=1", "--layer_tokens=128"]


def run_json(capsys, *flags):
    assert bench.main([*TINY, *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON object (progress is on stderr)


def test_json_fields_and_values(capsys):
    r = run_json(capsys, "--preset=tiny-dense", "--moe_preset=tiny-moe")
    cfg = model_lib.get_preset("tiny-dense")
    assert (r["preset"], r["device"], r["dtype"]) == ("tiny-dense", "cpu", "float32")
    assert (r["batch_size"], r["seq_len"]) == (2, 64)  # the CPU default batch; tiny's block_size caps seq_len
    assert r["ntp_step_ms"] > 0 and r["nitp_step_ms"] > 0
    assert math.isclose(r["ntp_tokens_per_s"], 2 * 64 / (r["ntp_step_ms"] / 1e3), rel_tol=1e-9)
    low, high = r["overhead_round_iqr"]
    assert low <= r["overhead_measured"] <= high  # the median of the per-round ratios lies between their quartiles
    assert math.isclose(r["overhead_of_medians"], r["nitp_step_ms"] / r["ntp_step_ms"] - 1, rel_tol=1e-9)
    # the FLOPs figures are the accounting's (the 4 * d SwiGLU projector, the default: 12 d^2), not a second formula
    full = flops.flops_per_token(cfg, 64, projector_params=12 * cfg.d_model ** 2)
    paper = flops.flops_per_token(cfg, 64, projector_params=12 * cfg.d_model ** 2, paper_mode=True)
    assert r["overhead_flops"] == full["aux_ratio"] and r["overhead_flops_paper"] == paper["aux_ratio"]
    assert r["flops_per_token_ntp"] == full["ntp"] and r["flops_per_token_nitp_extra"] == full["aux_extra"]
    # the peers, timed in the same interleaved rounds, each against its own FLOPs floor (their defaults)
    assert set(r["peers"]) == {"mtp", "nextlat"}
    for name, kwargs in (("mtp", dict(mtp_depth=1)), ("nextlat", dict(nextlat=True))):
        p = r["peers"][name]
        assert p["overhead_flops"] == flops.flops_per_token(cfg, 64, **kwargs)["aux_ratio"] > 0
        low, high = p["overhead_round_iqr"]
        assert low <= p["overhead_measured"] <= high and p["step_ms"] > 0 and p["mfu"] is None
        assert math.isclose(p["tokens_per_s"], 2 * 64 / (p["step_ms"] / 1e3), rel_tol=1e-9)
    assert abs(r["overhead_flops_9bA1b_paper"] - 0.023) < 0.001  # the paper's ~2.3% (docs/method.md, "FLOPs")
    assert 0 < r["overhead_flops_9bA1b_full"] < r["overhead_flops_9bA1b_paper"]  # + attention scores, dense block
    assert r["projector_ms"] > 0 and r["nitp_loss_ms"] > 0  # timed: only the sign is certain on a shared machine
    assert r["moe_layer"].startswith("tiny-moe") and r["moe_path"] == "loop, eager"
    assert r["moe_tokens_per_s"] > 0 and r["dense_tokens_per_s"] > 0
    assert math.isclose(r["moe_vs_dense"], r["moe_tokens_per_s"] / r["dense_tokens_per_s"], rel_tol=1e-9)
    assert r["max_rss_gib"] > 0.01  # torch alone is > 100 MB: a unit error (bytes vs KiB) would show
    assert r["mfu_ntp"] is None and r["peak_mem_ntp_gib"] is None  # CUDA only
    # the loss head: plain vs chunked (a quarter of the batch's positions by default), timed and measured
    assert r["ce_chunk"] == r["batch_size"] * r["seq_len"] // 4 and r["head_chunked_vs_plain_time"] > 0
    assert r["head_peak_plain_gib"] > 0.1 and r["head_peak_chunked_gib"] > 0.1  # a whole process: torch alone > 0.1
    assert r["head_logits_gib"] == pytest.approx(r["batch_size"] * r["seq_len"] * 50304 * 8 / 2**30)
    assert set(r["targets"]) == {"overhead_within_1pt", "moe_vs_dense_at_least_0.5", "mfu_at_least_0.45"}
    assert r["targets"]["mfu_at_least_0.45"] is None
    assert r["threads"] == 1  # the default: one CPU thread (see bench.cpu_threads)
    assert r["clock"] == "process CPU time"


def test_moe_preset_table_and_threads_restored():
    threads = torch.get_num_threads()
    r = bench.run_benchmark(bench.parse_config([*TINY, "--preset=tiny-moe", "--threads=1"]))
    assert torch.get_num_threads() == threads
    assert r["moe_layer"].startswith("tiny-moe")  # an MoE preset compares its own block
    table = bench.format_table(r)
    for text in ("NTP", "NITP", "step time", "FLOPs floor", "parts alone", "9bA1b", "MoE layer", "targets:", "MTP",
                 "NextLat"):
        assert text in table


def test_resolve_defaults_and_errors():
    cfg, mcfg = bench.resolve(bench.BenchConfig(device="cpu"))
    assert (cfg.dtype, cfg.batch_size, cfg.seq_len, cfg.layer_tokens) == ("float32", 2, 256, 2048)
    assert cfg.target_layer == mcfg.nitp_target_layer == 1 and cfg.projector_hidden == 4 * mcfg.d_model
    assert cfg.moe_preset == "small-moe"  # "small" is dense
    cfg, _ = bench.resolve(bench.BenchConfig(preset="tiny-dense", device="cpu", target_layer=0, seq_len=8))
    assert (cfg.target_layer, cfg.seq_len) == (0, 8)  # explicit values win, 0 included
    for bad, match in [(dict(moe_preset="tiny-dense"), "no MoE block"), (dict(seq_len=10_000), "block_size"),
                       (dict(target_layer=99), "target_layer"), (dict(dtype="fp8"), "dtype"),
                       (dict(rounds=0), "positive"), (dict(preset="nope"), "unknown preset"),
                       (dict(preset="tiny-moe", compile=True), "needs CUDA and bfloat16")]:
        with pytest.raises(ValueError, match=match):
            bench.resolve(bench.BenchConfig(device="cpu", **bad))


def test_cli_parsing_and_unknown_flag(capsys):
    cfg = bench.parse_config(["--compile", "--rounds=7", "--target_layer=none", "--peak_flops=1e15", "--json=0"])
    assert (cfg.compile, cfg.rounds, cfg.target_layer, cfg.peak_flops, cfg.json) == (True, 7, None, 1e15, False)
    assert bench.main(["--bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "'--bogus=1'" in err and "rounds" in err and "preset" in err  # names the flag and the known keys
    for argv, match in [(["--rounds=abc"], "expects int"), (["--compile=maybe"], "expects a bool"),
                        (["rounds=3"], "unknown option")]:
        with pytest.raises(ValueError, match=match):
            bench.parse_config(argv)


def test_interleaving_order():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times, _ = bench.time_interleaved(runs, rounds=3, warmup=1, device=torch.device("cpu"), label="test")
    assert "".join(calls) == "abbaabba"  # the order flips every round, warm-up included
    assert len(times["a"]) == len(times["b"]) == 3  # warm-up rounds are not timed
    calls.clear()
    runs = {name: (lambda name=name: calls.append(name)) for name in "abcd"}  # the four objectives' steps
    bench.time_interleaved(runs, rounds=1, warmup=1, device=torch.device("cpu"), label="test")
    assert "".join(calls) == "abcddcba"


def test_ntp_step_skips_nitp_and_nitp_step_trains_the_projector(monkeypatch):
    cfg, mcfg = bench.resolve(bench.BenchConfig(preset="tiny-dense", device="cpu", seq_len=8))
    seen = []
    real = bench.nitp_loss_terms

    def spy(pred, target, **kwargs):
        seen.append((pred.requires_grad, target.shape))
        return real(pred, target, **kwargs)

    monkeypatch.setattr(bench, "nitp_loss_terms", spy)  # the step's loss comes from nitp_loss_terms
    steps = bench.training_steps(cfg, mcfg, torch.device("cpu"), torch.autocast("cpu", enabled=False))
    steps["ntp"]()
    assert seen == []
    steps["nitp"]()
    assert seen == [(True, (2, 8, mcfg.d_model))]  # the projector's output (with grad) vs the target layer


def test_peer_steps_run_their_own_terms(monkeypatch):
    cfg, mcfg = bench.resolve(bench.BenchConfig(preset="tiny-dense", device="cpu", seq_len=8))
    seen = []
    for name in ("mtp_terms", "nextlat_terms"):
        real = getattr(peers, name)
        spy = lambda *args, real=real, name=name, **kwargs: seen.append(name) or real(*args, **kwargs)  # noqa: E731
        monkeypatch.setattr(peers, name, spy)
    steps = bench.training_steps(cfg, mcfg, torch.device("cpu"), torch.autocast("cpu", enabled=False))
    assert set(steps) == set(bench.OBJECTIVES)
    steps["ntp"](), steps["nitp"]()
    assert seen == []
    steps["mtp"](), steps["nextlat"]()
    assert seen == ["mtp_terms", "nextlat_terms"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_grouped_mm_and_mfu(capsys):
    r = run_json(capsys, "--preset=tiny-moe", "--device=cuda", "--seq_len=64")
    assert r["dtype"] == "bfloat16" and r["clock"] == "wall" and r["moe_path"] == "grouped_mm, eager"
    assert r["peak_mem_ntp_gib"] > 0 and r["peak_mem_nitp_gib"] > 0
    if r["peak_flops"]:
        assert 0 < r["mfu_ntp"] < 1
