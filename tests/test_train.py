"""Tests for train.py: config parsing and errors, the loss normalisation, exact resume, atomic checkpoints,
data parallelism and the log format. Tiny models ("tiny-dense", "tiny-moe") on a synthetic data dir
written here with numpy, so nothing depends on the Shakespeare preparation."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import config
import train
from support import checkpoint

EOT = 50256
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- fixtures
def _token_stream(n, rng):
    """Documents that count upwards from a random start (mod 64, ids 10..73), each ended by <|endoftext|>:
    easy to learn, so a few steps visibly lower the loss; EOTs exercise the doc-boundary mask."""
    out = []
    while len(out) < n:
        start, length = rng.integers(0, 64), rng.integers(10, 40)
        out += [10 + (start + i) % 64 for i in range(length)] + [EOT]
    return np.array(out[:n], dtype=np.uint16)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    _token_stream(20_000, rng).tofile(path / "train.bin")
    _token_stream(4_000, rng).tofile(path / "val.bin")
    (path / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": EOT,
                                                "train_tokens": 20_000, "val_tokens": 4_000, "source": "synthetic"}))
    return path


def tiny_config(out_dir, data_dir, **fields):
    base = dict(preset="tiny-dense", data_dir=str(data_dir), out_dir=str(out_dir), device="cpu", seq_len=16,
                batch_size=2, global_batch_tokens=64, max_steps=6, lr=1e-2, warmup_steps=2, eval_interval=0,
                eval_batches=2, log_interval=1, ckpt_interval=0)
    base.update(fields)
    return train.TrainConfig(**base)


def read_log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


@pytest.fixture(scope="module")
def nitp_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("nitp_run")
    cfg = tiny_config(out, data_dir, objective="nitp", max_steps=30, eval_interval=15, warmup_steps=3)
    return train.train(cfg), out


# ---------------------------------------------------------------------------- training runs
def test_tiny_nitp_run_lowers_both_losses(nitp_run):
    result, _ = nitp_run
    lines = [r for r in result.history if r["kind"] == "train"]
    assert result.step == 30 and len(lines) == 30
    first, last = lines[:3], lines[-3:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    # the counting data is learnable in a few steps: CE falls from ~ln(50k) ~ 10.8 by several nats
    assert mean(last, "loss_ntp") < mean(first, "loss_ntp") - 2.0
    assert mean(last, "loss_nitp") < mean(first, "loss_nitp") - 0.1
    for r in lines:
        assert r["loss"] == pytest.approx(r["loss_ntp"] + 1.0 * r["loss_nitp"], rel=1e-6)  # lambda = 1 on tiny-dense


def test_log_jsonl_and_checkpoint_follow_the_contract(nitp_run):
    result, out = nitp_run
    log = read_log(out)
    assert log[0]["kind"] == "config" and {"train_config", "model_config"} <= log[0].keys()
    assert log[0]["train_config"]["objective"] == "nitp" and log[0]["model_config"]["n_layer"] >= 1
    train_lines = [r for r in log if r["kind"] == "train"]
    eval_lines = [r for r in log if r["kind"] == "eval"]
    keys = {"step", "tokens", "lr", "loss", "loss_ntp", "loss_nitp", "grad_norm", "tokens_per_s", "elapsed_s"}
    assert all(keys <= r.keys() for r in train_lines)
    assert [r["step"] for r in train_lines] == list(range(1, 31))
    assert train_lines[-1]["tokens"] == 30 * 64
    assert [r["step"] for r in eval_lines] == [15, 30]
    for r in eval_lines:
        assert {"val_loss", "val_loss_nitp", "effective_rank", "avg_cosine", "target_effective_rank",
                "target_avg_cosine"} <= r.keys()
        assert r["effective_rank"] >= 1 and -1 <= r["avg_cosine"] <= 1 and -1 <= r["target_avg_cosine"] <= 1
        assert r["target_avg_cosine"] != r["avg_cosine"]  # another layer's states
    ckpt_dir = checkpoint.latest(out)
    meta = checkpoint.read_meta(ckpt_dir)
    assert meta["step"] == 30 and meta["tokenizer"] == "gpt2" and meta["world_size"] == 1
    assert {"model_config", "train_config", "data_dir"} <= meta.keys() and not os.path.isabs(meta["data_dir"])
    saved = checkpoint.saved_keys(ckpt_dir)
    assert "rng" in saved and any(k.startswith("model.projector.") for k in saved)
    assert any(k.startswith("optimizer.state.") for k in saved)
    loaded, _ = checkpoint.load_model(out)  # eval.py, export.py and bench.py read checkpoints this way
    assert_same_weights(loaded, result.model)


def test_ntp_run_has_no_nitp_loss(tmp_path, data_dir):
    result = train.train(tiny_config(tmp_path, data_dir, objective="ntp", max_steps=2))
    assert result.projector is None
    assert all("loss_nitp" not in r for r in read_log(tmp_path)[1:])


def test_nitp_weight_zero_is_bitwise_ntp(tmp_path, data_dir):
    """NTP and NITP differ only by the NITP term: at lambda = 0 the projector gets zero grads, which must
    change neither the model's init, nor the grad-clip norm, nor any model update, bit for bit."""
    ntp = train.train(tiny_config(tmp_path / "ntp", data_dir, objective="ntp", max_steps=4))
    zero = train.train(tiny_config(tmp_path / "zero", data_dir, objective="nitp", nitp_weight=0.0, max_steps=4))
    one = train.train(tiny_config(tmp_path / "one", data_dir, objective="nitp", nitp_weight=1.0, max_steps=4))
    assert_same_weights(ntp.model, zero.model)
    ntp_lines, zero_lines = ([r for r in read_log(tmp_path / d) if r["kind"] == "train"] for d in ("ntp", "zero"))
    assert [r["grad_norm"] for r in ntp_lines] == [r["grad_norm"] for r in zero_lines]  # clipping saw the same norm
    # and the comparison has teeth: a real NITP term does move the model
    assert any(not torch.equal(a, b) for a, b in zip(ntp.model.state_dict().values(), one.model.state_dict().values()))


@pytest.mark.parametrize("fields", [
    dict(objective="cosreg"),
    dict(attach="pre_norm", projector="linear", loss_type="smooth_l1"),
    dict(shift=0, loss_type="mse", stop_grad=False, projector="none"),
    dict(preset="tiny-moe", loss_type="kl", target_layer=0, schedule="cosine"),
])
def test_every_ablation_switch_trains(tmp_path, data_dir, fields):
    result = train.train(tiny_config(tmp_path, data_dir, max_steps=3, eval_batches=1, **fields))
    lines = [r for r in read_log(tmp_path) if r["kind"] == "train"]
    aux = f"loss_{fields.get('objective', 'nitp')}"
    assert len(lines) == 3 and all(np.isfinite([r["loss"], r["loss_ntp"], r[aux], r["grad_norm"]]).all() for r in lines)
    assert ("loss_balance" in lines[0]) == (fields.get("preset") == "tiny-moe")
    assert result.step == 3


def test_nitp_start_step_delays_the_term(tmp_path, data_dir):
    """Before nitp_start_step the term is logged but not trained: lambda counts as 0 in the loss and the
    projector, which gets no gradient, is still exactly its initialisation (no weight decay either)."""
    from model import GPT
    from nitp_loss import NITPHead
    cfg = tiny_config(tmp_path, data_dir, objective="nitp", nitp_start_step=10, max_steps=3)
    result = train.train(cfg)
    lines = [r for r in read_log(tmp_path) if r["kind"] == "train"]
    assert all(r["loss"] == r["loss_ntp"] and r["loss_nitp"] > 0 for r in lines)
    _, mcfg = config.resolve_config(cfg)
    torch.manual_seed(cfg.seed)
    GPT(mcfg)
    assert_same_weights(result.projector, NITPHead(mcfg.d_model, None, "swiglu", init_std=mcfg.init_std))


@pytest.mark.parametrize("preset", ["tiny-dense", "tiny-moe"])
def test_sigterm_then_resume_is_bitwise_identical(tmp_path, data_dir, monkeypatch, preset):
    """SIGTERM after step 3 saves and exits cleanly; --resume then continues exactly (model, projector,
    optimizer, schedule, data position), giving the weights of an uninterrupted run, bit for bit on CPU."""
    fields = dict(preset=preset, objective="nitp", mask_doc_boundary=True, max_steps=6, eval_interval=2)
    full = train.train(tiny_config(tmp_path / "full", data_dir, **fields))

    real_step = train.train_step

    def step_then_sigterm(run):
        out = real_step(run)
        if run.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler train() installed
        return out

    monkeypatch.setattr(train, "train_step", step_then_sigterm)
    handler_before = signal.getsignal(signal.SIGTERM)
    stopped = train.train(tiny_config(tmp_path / "split", data_dir, **fields))
    assert stopped.step == 3 and checkpoint.read_meta(checkpoint.latest(tmp_path / "split"))["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is handler_before  # train() put the old handler back
    monkeypatch.setattr(train, "train_step", real_step)
    resumed = train.train(tiny_config(tmp_path / "split", data_dir, resume=True, **fields))
    assert resumed.step == 6
    assert_same_weights(full.model, resumed.model)
    assert_same_weights(full.projector, resumed.projector)
    steps = [r["step"] for r in read_log(tmp_path / "split") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed run appends to the same log


def test_losses_are_normalised_by_the_global_pair_count(tmp_path, data_dir):
    """With doc-boundary masking the micro-batches count different numbers of pairs; the step's L_NITP must
    be the mean over ALL pairs of the global batch (not a mean of per-micro-batch means), and CE the mean
    over all tokens. Recomputed here from the initial weights on the concatenated global batch."""
    from model import GPT
    from nitp_loss import NITPHead, document_pair_mask, nitp_loss
    cfg = tiny_config(tmp_path, data_dir, objective="nitp", mask_doc_boundary=True, max_steps=1,
                      global_batch_tokens=128, eval_batches=0)
    train.train(cfg)
    logged = read_log(tmp_path)[1]
    cfg, mcfg = config.resolve_config(cfg)
    torch.manual_seed(cfg.seed)  # the same init as build_run: model first, then the projector
    model = GPT(mcfg)
    projector = NITPHead(mcfg.d_model, None, "swiglu", init_std=mcfg.init_std)
    sampler = train.data.BatchSampler(train.data.load_split(data_dir, "train"), 8, cfg.seq_len, cfg.seed)
    micro = [sampler.get(0, 2 * m, 2) for m in range(4)]  # grad_accum = 128 / (2 * 16)
    masks = [document_pair_mask(b[:, :-1], 1, EOT) for b in micro]
    assert len({int(m.sum()) for m in masks}) > 1, "pick data where the micro-batches' pair counts differ"
    batch = torch.cat(micro)
    with torch.no_grad():
        out = model(batch[:, :-1], layers=(cfg.target_layer,))
        ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), batch[:, 1:].flatten())
        nitp = nitp_loss(projector(out.final_hidden), out.layers[cfg.target_layer], pair_valid=torch.cat(masks))
    # float32 sums in a different grouping (per micro-batch, then added): 1e-5 relative is ample
    assert logged["loss_ntp"] == pytest.approx(ce.item(), rel=1e-5)
    assert logged["loss_nitp"] == pytest.approx(nitp.item(), rel=1e-5)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, data_dir):
    """torchrun with 2 gloo processes (1 micro-batch each) vs 1 process accumulating the same 2 micro-batches:
    the same global batch, so the same weights up to float32 rounding (torchrun runs 1 thread per process,
    so matmuls reduce in a different order; 2e-5 relative, 5e-6 absolute allow that after 4 steps). The DDP run leaves
    batch_size at its default, which must split the global batch over the processes: 64 / (16 x 2) = 2."""
    fields = dict(objective="nitp", max_steps=4, mask_doc_boundary=True, global_batch_tokens=64, batch_size=2)
    single = train.train(tiny_config(tmp_path / "single", data_dir, **fields))
    cfg = tiny_config(tmp_path / "ddp", data_dir, **{**fields, "batch_size": None})
    args = [f"--{k}={v}" for k, v in vars(cfg).items() if k != "model_overrides" and v is not None]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp_model, meta = checkpoint.load_model(tmp_path / "ddp")
    assert meta["world_size"] == 2 and meta["step"] == 4
    for name, value in single.model.state_dict().items():
        # AdamW's first steps are about lr * sign(g): a gradient near 0 summed in another order moves a weight
        # by ~1e-6 (1.6e-6 measured under DDP), where a wrong gradient moves it by ~lr = 1e-2
        torch.testing.assert_close(ddp_model.state_dict()[name], value, rtol=2e-5, atol=5e-6, msg=name)
    ddp_log, single_log = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    assert ddp_log[0]["grad_accum"] == 1 and single_log[0]["grad_accum"] == 2
    assert ddp_log[0]["train_config"]["batch_size"] == single_log[0]["train_config"]["batch_size"] == 2
    assert ddp_log[1]["loss_nitp"] == pytest.approx(single_log[1]["loss_nitp"], rel=1e-5)


# ---------------------------------------------------------------------------- configuration
def test_cli_and_file_set_train_and_model_fields(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('objective = "ntp"\nlr = 3\nn_layer = 5\nstop_grad = false\nmax_steps = 7\n')
    cfg = config.parse_config([f"--config={toml}", "--max_steps=9", "--nitp_weight=0.8", "--compile",
                              "--mask_doc_boundary=1", "--target_layer=none", "--d_model=48"])
    assert (cfg.objective, cfg.lr, cfg.stop_grad, cfg.max_steps) == ("ntp", 3.0, False, 9)  # flags win over the file
    assert (cfg.nitp_weight, cfg.compile, cfg.mask_doc_boundary, cfg.target_layer) == (0.8, True, True, None)
    assert cfg.model_overrides == {"n_layer": 5, "d_model": 48}  # nitp_weight went to TrainConfig, not GPTConfig
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"shift": 0, "model_overrides": {"n_head": 2}}))
    cfg = config.parse_config([f"--config={as_json}"])
    assert cfg.shift == 0 and cfg.model_overrides == {"n_head": 2}


@pytest.mark.parametrize("argv, match", [
    (["--bogus=1"], "'bogus'"),
    (["--lr=fast"], "'lr' expects float"),
    (["--max_steps=2.5"], "'max_steps' expects int"),
    (["--stop_grad=maybe"], "'stop_grad' expects a bool"),
    (["--n_layer=many"], "'n_layer' expects int"),
    (["max_steps=3"], "--key=value"),
])
def test_bad_flags_name_the_key_and_type(argv, match):
    with pytest.raises(ValueError, match=match):
        config.parse_config(argv)


@pytest.mark.parametrize("text, match", [('bogus = 1\n', "'bogus'"), ('lr = "x"\n', "'lr' expects float"),
                                         ('compile = 2\n', "'compile' expects bool"),
                                         ('max_steps = true\n', "'max_steps'")])
def test_bad_config_file_names_the_key_and_type(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        config.parse_config([f"--config={path}"])


def test_preset_defaults_and_validation():
    cfg, mcfg = config.resolve_config(train.TrainConfig(preset="9bA1b"))  # the paper's 9B MoE: L5 of 24, lambda 0.8
    assert (cfg.target_layer, cfg.nitp_weight, mcfg.n_layer) == (5, 0.8, 24)
    cfg, mcfg = config.resolve_config(train.TrainConfig(preset="9bA1b", nitp_weight=0.6,
                                                        model_overrides={"n_layer": 10}))
    assert (cfg.target_layer, cfg.nitp_weight) == (2, 0.6)  # depth changed: round(0.2 * 10), the flag's lambda
    with pytest.raises(ValueError, match="target_layer=99 is outside"):
        config.resolve_config(train.TrainConfig(preset="tiny-dense", target_layer=99, seq_len=8))
    for fields, match in [(dict(objective="jtp"), "objective"), (dict(projector="mlp"), "projector"),
                          (dict(attach="middle"), "attach"), (dict(loss_type="l1"), "loss_type"),
                          (dict(seq_len=10**6), "block_size"), (dict(batch_size=0), "must be positive")]:
        with pytest.raises(ValueError, match=match):
            config.resolve_config(train.TrainConfig(preset="tiny-dense", **{"seq_len": 8, **fields}))


def test_data_and_batch_errors(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train.train(tiny_config(tmp_path, tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="vocab_size"):
        train.train(tiny_config(tmp_path, data_dir, model_overrides={"vocab_size": 1000}))
    with pytest.raises(ValueError, match="global_batch_tokens=48"):
        train.train(tiny_config(tmp_path, data_dir, global_batch_tokens=48))
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        train.train(tiny_config(tmp_path / "empty", data_dir, resume=True))


def test_resume_refuses_a_different_config(tmp_path, data_dir):
    train.train(tiny_config(tmp_path, data_dir, objective="nitp", max_steps=1, eval_batches=0))
    with pytest.raises(ValueError, match="model field n_layer"):
        train.train(tiny_config(tmp_path, data_dir, objective="nitp", resume=True, model_overrides={"n_layer": 3}))
    with pytest.raises(ValueError, match="objective: checkpoint 'nitp', this run 'ntp'"):
        train.train(tiny_config(tmp_path, data_dir, objective="ntp", resume=True))
    with pytest.raises(ValueError, match="projector"):
        train.train(tiny_config(tmp_path, data_dir, objective="nitp", projector="linear", resume=True))


def test_main_reports_errors_without_a_traceback(capsys):
    assert train.main(["--bogus=1"]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- building blocks
def test_lr_schedules():
    cfg = train.TrainConfig(lr=1.0, max_steps=100, warmup_steps=10, decay_frac=0.2, min_lr_frac=0.1)
    lrs = [train.lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[10:80] == [1.0] * 70  # warmup, then stable
    assert lrs[80] == 1.0 and lrs[90] == pytest.approx(1 - 0.9 * 0.5) and lrs[99] == pytest.approx(1 - 0.9 * 0.95)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # never rises after warmup
    cos = train.TrainConfig(lr=1.0, max_steps=110, warmup_steps=10, schedule="cosine", min_lr_frac=0.1)
    assert train.lr_at(10, cos) == 1.0 and train.lr_at(60, cos) == pytest.approx(0.55)


def test_memory_plan_is_printed_and_a_plan_over_the_device_is_refused(tmp_path, data_dir, monkeypatch, capsys):
    from support import memory
    train.train(tiny_config(tmp_path / "fits", data_dir, max_steps=1, eval_batches=0))
    assert "memory plan per rank (GiB)" in capsys.readouterr().out
    monkeypatch.setattr(memory, "device_memory", lambda device: 2**20)  # a 1 MiB "GPU"
    with pytest.raises(ValueError, match="--activation_checkpointing=true|--batch_size"):
        train.train(tiny_config(tmp_path / "too_big", data_dir, max_steps=1, eval_batches=0))
    assert not (tmp_path / "too_big" / "checkpoints").exists()  # refused before training
