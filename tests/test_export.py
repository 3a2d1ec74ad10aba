"""Tests for export.py: a run exported as a transformers checkpoint computes what model.py computes, and --force
replaces only an earlier export or an empty folder, never a run, a folder of runs or anything else.

Needs Hugging Face transformers (a test-only dependency, requirements-test.txt): the whole file is skipped
without it. Every model is tiny (d_model 32, 2 layers); the checkpoints are written by train.py, either by a
short real run or through its save_checkpoint with randomised weights (non-unit norm gains, non-zero biases,
O(1) activations: a mapping mistake anywhere changes the logits by O(1))."""

import json
import os
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import data  # noqa: E402
import model as model_lib  # noqa: E402
import train  # noqa: E402
from nitp_loss import NITPHead  # noqa: E402
from support import checkpoint  # noqa: E402
from tools import export  # noqa: E402

EOT = data.EOT
# GQA (4 query heads share 2 kv heads), head_dim 16 != d_model / n_head = 8, qkv bias, untied, Qwen2-like rope
GQA_BIAS_UNTIED = dict(vocab_size=50304, block_size=64, n_layer=2, d_model=32, n_head=4, n_kv_head=2, head_dim=16,
                       d_ff=48, qkv_bias=True, tie_embeddings=False, rope_theta=1e6, norm_eps=1e-5)
# plain multi-head attention, no bias, tied embeddings, the GPTConfig defaults for the rest
MHA_TIED = dict(vocab_size=50304, block_size=64, n_layer=2, d_model=32, n_head=4, d_ff=64)


# ---------------------------------------------------------------------------- helpers
def randomised_model(fields, seed=0):
    """A GPT whose every tensor is random at O(1) scale: matrices ~ N(0, 1/fan_in) (the embedding N(0, 1)),
    norm gains 1 + N(0, 0.2^2), biases N(0, 0.2^2)."""
    torch.manual_seed(seed)
    model = model_lib.GPT(model_lib.GPTConfig(**fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 1.0 if name == "embed.weight" else p.shape[1] ** -0.5)
    return model.eval()


def write_run(run_dir, model, projector=None, tokenizer="gpt2"):
    """RUN_DIR/checkpoints/step_0 as train.py writes it (the model and, if given, the projector)."""
    state = {f"{checkpoint.MODEL_KEY}.{k}": v for k, v in model.state_dict().items()}
    state.update({f"projector.{k}": v for k, v in (projector.state_dict() if projector is not None else {}).items()})
    checkpoint.save(run_dir, 0, {"model": state}, {"model_config": model.config.to_dict(), "train_config": {},
                                                   "tokenizer": tokenizer, "data_dir": ""})
    return str(run_dir)


def load_hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def greedy_ours(model, idx, steps):
    """Greedy decoding with model.GPT (full recompute each step); after a row's first <|endoftext|> the row
    is padded with it, as transformers' generate does with pad_token_id = eos."""
    done = torch.zeros(idx.shape[0], dtype=torch.bool)
    for _ in range(steps):
        nxt = model(idx).logits[:, -1].argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, EOT), nxt)
        done |= nxt == EOT
        idx = torch.cat([idx, nxt[:, None]], dim=1)
    return idx


@torch.no_grad()
def assert_matches_ours(ours, folder, seed=0):
    """Same logits on random ids and the same greedy continuation from transformers' model in `folder`."""
    hf = load_hf(folder)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, data.GPT2_VOCAB_SIZE, (2, 48), generator=gen)
    expected, actual = ours(idx).logits, hf(idx).logits  # (B, T, V)
    assert expected.abs().max() > 1.0  # O(1) logits: a mapping mistake would show by O(1)
    # Same fp32 math, different op order (fused vs split qkv/gate_up matmuls, F.rms_norm vs HF's manual
    # RMSNorm, RoPE angles via theta**-x vs 1/theta**x, SDPA with vs without an explicit mask): measured
    # differences are ~1e-6 on logits of magnitude 1-10; 1e-4 leaves ~100x margin and is still ~1e4 times
    # smaller than what a wrong permutation, bias, eps or rope_theta produces.
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    prompt, steps = idx[:, :8], 10
    mine = greedy_ours(ours, prompt, steps)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps, do_sample=False,
                         pad_token_id=EOT)
    theirs = torch.cat([theirs, torch.full((2, mine.shape[1] - theirs.shape[1]), EOT)], dim=1)  # stopped early
    assert torch.equal(theirs, mine), (theirs, mine)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real (tiny) NITP run through train.train on a synthetic counting corpus: a checkpoint with a projector."""
    root = tmp_path_factory.mktemp("trained")
    tokens = torch.arange(20_000) % 64 + 10
    tokens[::37] = EOT
    for split in ("train", "val"):
        tokens.numpy().astype("uint16").tofile(root / f"{split}.bin")
    (root / "meta.json").write_text(json.dumps({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": EOT,
                                                "train_tokens": 20_000, "val_tokens": 20_000, "source": "synthetic"}))
    cfg = train.TrainConfig(preset="tiny-dense", objective="nitp", data_dir=str(root), out_dir=str(root / "run"),
                            device="cpu", seq_len=16, batch_size=2, global_batch_tokens=64, max_steps=6, lr=1e-2,
                            warmup_steps=2, eval_interval=0, eval_batches=0, log_interval=10, ckpt_interval=0,
                            cpu_malloc_tuning=False)
    result = train.train(cfg)
    return root / "run", result.model.eval()


# ---------------------------------------------------------------------------- equivalence
def test_trained_run_exports_to_a_model_with_our_logits_and_generations(trained_run, tmp_path):
    run_dir, ours = trained_run
    assert any(".projector." in k for k in checkpoint.saved_keys(checkpoint.latest(run_dir)))  # an NITP run
    out = tmp_path / "hf"
    assert export.main([str(run_dir), f"--out={out}"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "merges.txt", "model.safetensors",
                                       "nitp_export.json", "tokenizer_config.json", "vocab.json"]
    marker = json.loads((out / "nitp_export.json").read_text())
    assert marker["written_by"] == "tools/export.py" and marker["step"] == 6 and marker["arch"] == "llama"
    from safetensors.torch import load_file
    names = set(load_file(out / "model.safetensors"))
    assert not any("projector" in n or "w_gate" in n for n in names)  # the NITP head is dropped
    assert "lm_head.weight" not in names  # tiny-dense ties it: transformers re-ties it to embed_tokens
    assert_matches_ours(ours, out)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("fields", [GQA_BIAS_UNTIED, MHA_TIED], ids=["gqa-bias-untied", "mha-tied"])
def test_every_supported_config_field_survives_the_export(arch, fields, tmp_path):
    ours = randomised_model(fields)
    out = export.export(write_run(tmp_path / "run", ours), tmp_path / "hf", arch=arch)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == arch and config["vocab_size"] == 50304  # the padded vocabulary is kept
    assert config["bos_token_id"] == config["eos_token_id"] == EOT
    assert_matches_ours(ours, out)


def test_export_without_safetensors_writes_pytorch_model_bin(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # makes `from safetensors.torch import` fail
    ours = randomised_model(GQA_BIAS_UNTIED, seed=1)
    out = export.export(write_run(tmp_path / "run", ours), tmp_path / "hf")
    assert "pytorch_model.bin" in os.listdir(out) and "model.safetensors" not in os.listdir(out)
    monkeypatch.undo()
    assert_matches_ours(ours, out, seed=1)


def test_bfloat16_export_stores_our_weights_rounded_to_bfloat16(tmp_path):
    ours = randomised_model(MHA_TIED)
    out = export.export(write_run(tmp_path / "run", ours), tmp_path / "hf", dtype="bfloat16")
    from safetensors.torch import load_file
    weights = load_file(os.path.join(out, "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert torch.equal(weights["model.embed_tokens.weight"], ours.embed.weight.to(torch.bfloat16))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


# ---------------------------------------------------------------------------- tokenizer
def test_auto_tokenizer_is_gpt2s_bpe(trained_run, tmp_path):
    out = export.export(trained_run[0], tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    reference = data.get_tokenizer()
    assert tokenizer("Hello world")["input_ids"] == reference.encode_ordinary("Hello world") == [15496, 995]
    # digits, contractions, newlines, runs of spaces, non-ASCII: where GPT-2's split regex differs from others
    text = "HAMLET:\nIn 1990, 12345 + 678 = 13023.  I'LL go; you're \"here\" -- café naïve ÅB\r\n\tend  "
    ids = tokenizer(text)["input_ids"]
    assert ids == reference.encode_ordinary(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == EOT
    assert tokenizer("<|endoftext|>a")["input_ids"][0] == EOT  # the special token is one id, not split
    assert transformers.GenerationConfig.from_pretrained(str(out)).eos_token_id == EOT


# ---------------------------------------------------------------------------- refusals and errors
def test_moe_run_is_refused_with_the_reason(tmp_path, capsys):
    moe = model_lib.GPT(model_lib.get_preset("tiny-moe"))
    run_dir = write_run(tmp_path / "run", moe, projector=NITPHead(moe.config.d_model))
    with pytest.raises(ValueError, match="MoE") as err:
        export.export(run_dir, tmp_path / "hf")
    assert "multi-head latent attention" in str(err.value)  # says why DeepSeek-V2's format does not fit either
    assert export.main([run_dir, f"--out={tmp_path / 'hf'}"]) == 2
    assert "MoE" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["run"]  # nothing written, not even a temporary folder


def snapshot(folder) -> dict:
    """Every file under `folder` and its bytes (folders included as None): to show that nothing was touched."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_existing_output_needs_force_and_failures_leave_no_partial_folder(tmp_path, monkeypatch, capsys):
    run_dir = write_run(tmp_path / "run", randomised_model(MHA_TIED))
    out = tmp_path / "hf"
    assert export.main([run_dir, f"--out={out}"]) == 0
    first = snapshot(out)
    assert export.main([run_dir, f"--out={out}"]) == 2  # without --force an existing, non-empty folder is kept
    assert "--force" in capsys.readouterr().err and snapshot(out) == first

    def broken_save(state, folder):
        raise OSError("disk full")
    monkeypatch.setattr(export, "save_weights", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export.export(run_dir, out, force=True)
    assert snapshot(out) == first  # the earlier export is untouched: the new one was written beside it
    with pytest.raises(OSError, match="disk full"):
        export.export(run_dir, tmp_path / "fresh")
    assert sorted(os.listdir(tmp_path)) == ["hf", "run"]  # no half-written folder, no temporary left behind

    monkeypatch.undo()
    assert export.main([str(checkpoint.latest(run_dir)), f"--out={out}", "--force", "--dtype=bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"  # replaced (from a checkpoint too)
    assert sorted(os.listdir(tmp_path)) == ["hf", "run"]


# ---------------------------------------------------------------------------- what --force may replace
@pytest.fixture
def runs(tmp_path):
    """runs/a and runs/b, two runs side by side (checkpoints and a log.jsonl each), and their bytes."""
    for name, seed in (("a", 0), ("b", 1)):
        write_run(tmp_path / "runs" / name, randomised_model(MHA_TIED, seed=seed))
        (tmp_path / "runs" / name / "log.jsonl").write_text('{"kind": "config"}\n')
    return tmp_path / "runs", snapshot(tmp_path / "runs")


def test_force_never_replaces_the_run_it_reads(runs, capsys):
    root, before = runs
    run = root / "a"
    ckpt = checkpoint.latest(run)
    for source, out in [(run, run), (run, run / "checkpoints"), (run, ckpt), (ckpt, ckpt), (ckpt, run),
                        (ckpt, run / "checkpoints"), (run, run / "hf")]:
        assert export.main([str(source), f"--out={out}", "--force"]) == 2, (source, out)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "the run" in err[0] and "pick an --out outside the run" in err[0], err
        assert snapshot(root) == before  # checkpoints and log.jsonl byte for byte, no temporary beside them


def test_force_never_replaces_a_folder_of_runs_or_another_run(runs, capsys):
    root, before = runs
    assert export.main([str(root / "a"), f"--out={root}", "--force"]) == 2  # it holds the run
    assert "holds the run" in capsys.readouterr().err
    assert export.main([str(root / "a"), f"--out={root / 'b'}", "--force"]) == 2  # another run: not an export
    err = capsys.readouterr().err
    assert "is not an earlier export" in err and "'checkpoints', which export.py never writes" in err
    assert snapshot(root) == before and sorted(os.listdir(root.parent)) == ["runs"]  # no temporary beside them


def test_force_never_replaces_an_export_with_anything_else_in_it(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "hf"
    assert export.main([str(root / "a"), f"--out={out}"]) == 0
    (out / "notes.txt").write_text("mine")
    kept = snapshot(out)
    assert export.main([str(root / "a"), f"--out={out}", "--force"]) == 2
    assert "'notes.txt', which export.py never writes" in capsys.readouterr().err and snapshot(out) == kept
    (out / "notes.txt").unlink()
    (out / "nitp_export.json").write_text('{"written_by": "someone else"}')
    assert export.main([str(root / "a"), f"--out={out}", "--force"]) == 2
    assert "export.py did not write it" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a folder")
    assert export.main([str(root / "a"), f"--out={tmp_path / 'file'}", "--force"]) == 2
    assert "not a folder" in capsys.readouterr().err and (tmp_path / "file").read_text() == "not a folder"


def test_force_replaces_an_earlier_export_or_an_empty_folder(runs, tmp_path):
    root, _ = runs
    out = tmp_path / "hf"
    out.mkdir()
    assert export.main([str(root / "a"), f"--out={out}"]) == 0  # an empty folder needs no --force
    assert export.main([str(root / "b"), f"--out={out}", "--force"]) == 0  # an earlier export is replaced
    assert json.loads((out / "nitp_export.json").read_text())["checkpoint"].endswith("b/checkpoints/step_0000000")
    (out / "nitp_export.json").unlink()  # an export written before the marker existed counts too
    assert export.main([str(root / "a"), f"--out={out}", "--force"]) == 0
    assert "a/checkpoints" in json.loads((out / "nitp_export.json").read_text())["checkpoint"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export.main([str(root / "a"), f"--out={empty}", "--force"]) == 0 and "config.json" in os.listdir(empty)
    assert sorted(os.listdir(tmp_path)) == ["empty", "hf", "runs"]  # no temporary left behind


def test_a_run_on_another_tokenizer_is_refused(tmp_path, capsys):
    run = write_run(tmp_path / "run", model_lib.GPT(model_lib.get_preset("tiny-dense")), tokenizer="qwen2.json")
    assert export.main([run, f"--out={tmp_path / 'hf'}"]) == 2
    assert "trained on 'qwen2.json' tokens" in capsys.readouterr().err and not (tmp_path / "hf").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert export.main([str(tmp_path / "nowhere"), f"--out={tmp_path / 'hf'}"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
