"""Tests for support/hf.py: NITP on Hugging Face transformers models.

* the hidden_states mapping of every supported architecture (Llama, Qwen2, Mistral, Qwen3, GPT-2), checked
  numerically against forward hooks on the embedding, each block and the final norm;
* equality with this repo: a tiny real run of train.py, exported by tools/export.py to Llama and Qwen2, gives the
  same NITP (sum, count) and the same gradients through transformers as through model.py;
* padding, document separators and sequences too short for a pair;
* NITPTrainer: a few steps lower the loss, the projector is trained, saved beside a model that loads as a plain
  LlamaForCausalLM, restored on resume; gradient accumulation gives the step's mean.

Needs transformers (test-only, requirements-test.txt); the Trainer tests need accelerate too. Everything is built
from configs (no download); tiny sizes, CPU."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_train import data_dir  # noqa: E402, F401 (data_dir is a fixture)

import model as model_lib  # noqa: E402
import train  # noqa: E402
from nitp_loss import NITPHead, nitp_loss_terms, nitp_pair_mask  # noqa: E402
from support import hf  # noqa: E402
from tools import export  # noqa: E402

EOT = 50256
REPO = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
CONFIGS = {  # model_type -> (config class, model class, fields); three blocks each
    "llama": ("LlamaConfig", "LlamaForCausalLM", SMALL),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", SMALL),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**SMALL, "head_dim": 8}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**SMALL, "head_dim": 8}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                                   bos_token_id=0, eos_token_id=0)),
}


def tiny_model(arch, seed=0, **fields):
    config_class, model_class, base = CONFIGS[arch]
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**{**base, **fields})
    return getattr(transformers, model_class)(config).eval()


# ---------------------------------------------------------------------------- the mapping, per architecture
def record(model, arch):
    """Forward hooks: what the embedding gives block 1, each block's output, the final norm's input and output."""
    taps, arch_layout = {"blocks": {}}, hf.ARCHITECTURES[arch]
    backbone = getattr(model, arch_layout.backbone)
    embedding = backbone.drop if arch == "gpt2" else backbone.embed_tokens  # GPT-2: dropout(wte + wpe)
    embedding.register_forward_hook(lambda m, a, out: taps.update(embedding=out))
    for i, block in enumerate(getattr(backbone, arch_layout.layers)):
        block.register_forward_hook(lambda m, a, out, i=i: taps["blocks"].update({i: out[0] if isinstance(out, tuple)
                                                                                 else out}))
    getattr(backbone, arch_layout.norm).register_forward_hook(lambda m, a, out: taps.update(norm_in=a[0],
                                                                                            norm_out=out))
    return taps


@pytest.mark.parametrize("tie", [None, False], ids=["default", "tie_last_hidden_states=False"])
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_hidden_states_mapping_matches_hooks(arch, tie):
    model = tiny_model(arch, **({} if tie is None else {"tie_last_hidden_states": tie}))
    taps = record(model, arch)
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    hidden, n, blocks = out.hidden_states, hf.num_layers(model), taps["blocks"]
    assert n == 3 and len(hidden) == n + 1
    assert torch.equal(hidden[0], taps["embedding"])  # index 0: the embedding output, block 1's input
    for k in range(1, n):
        assert torch.equal(hidden[k], blocks[k - 1])  # index k: the output of block k (the k-1-th hook)
    assert torch.equal(taps["norm_in"], blocks[n - 1])  # the final norm reads the last block's output
    assert not torch.allclose(taps["norm_out"], taps["norm_in"])  # the two are distinguishable
    if tie is None:  # transformers' default: the LAST entry is the final norm's output (last_hidden_state)
        assert torch.equal(hidden[n], taps["norm_out"])
    else:  # the config's switch keeps the last block's output instead
        assert torch.equal(hidden[n], blocks[n - 1])
    assert hf.last_entry_is_post_norm(model) is (tie is None)
    assert torch.equal(out.logits, model.lm_head(taps["norm_out"]))  # post-norm h is what the LM head reads

    expected_z = [taps["embedding"], *[blocks[i] for i in range(n)]]  # z_k: after block k (model.py's layers[k])
    expected_h = {"post_norm": taps["norm_out"], "pre_norm": blocks[n - 1]}
    for k in range(n + 1):
        for attach in hf.ATTACH:
            h, z = hf.nitp_hidden(model, out, k, attach, final_residual=taps["norm_in"])
            assert torch.equal(h, expected_h[attach]) and torch.equal(z, expected_z[k]), (k, attach)
            if hf.needs_final_residual(model, k, attach):  # only there: not in the tuple
                assert tie is None and (k == n or attach == "pre_norm")
                with pytest.raises(ValueError, match="capture_final_residual"):
                    hf.nitp_hidden(model, out, k, attach)
            else:
                h2, z2 = hf.nitp_hidden(model, out, k, attach)
                assert torch.equal(h2, h) and torch.equal(z2, z)
    z_last = hf.nitp_hidden(model, out, -1, final_residual=taps["norm_in"])[1]  # negative: from the top
    assert torch.equal(z_last, blocks[n - 1])  # -1: after the last block


def test_unsupported_architecture_and_missing_hidden_states_are_clear_errors():
    config = transformers.GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=64)
    neox = transformers.GPTNeoXForCausalLM(config)
    x = torch.randint(0, 64, (1, 5))
    with pytest.raises(ValueError, match="'gpt_neox'.*ARCHITECTURES"):
        hf.nitp_terms(neox, NITPHead(32), x)
    llama = tiny_model("llama")
    with pytest.raises(ValueError, match="output_hidden_states=True"):
        hf.nitp_hidden(llama, llama(x), 1)
    with pytest.raises(ValueError, match="outside"):
        hf.nitp_terms(llama, NITPHead(32), x, target_layer=4)
    with pytest.raises(ValueError, match="attention_mask"):
        hf.nitp_terms(llama, NITPHead(32), x, attention_mask=torch.ones(1, 4, dtype=torch.long))


@pytest.mark.parametrize("weight", [float("inf"), float("nan"), -1.0, "1"])
def test_a_non_finite_or_negative_lambda_is_refused_at_construction(weight):
    """An infinite lambda trained a model to NaN weights with exit 0 (found by trying it); NaN was refused already."""
    with pytest.raises(ValueError, match=r"^nitp_weight=.* must be a finite number >= 0$"):
        hf.NITPConfig(nitp_weight=weight).check()


def test_default_target_layer_is_the_repos_rule():
    for n in range(1, 33):
        assert hf.resolve_target_layer(None, n) == model_lib.GPTConfig(n_layer=n).nitp_defaults()[0]
    assert hf.resolve_target_layer(-1, 4) == 4 and hf.resolve_target_layer(-5, 4) == 0


def test_module_imports_without_transformers():
    code = "import sys; sys.modules['transformers'] = None; import support.hf as h; print(h.PROJECTOR_WEIGHTS)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "nitp_projector.safetensors", done.stderr


# ---------------------------------------------------------------------------- equality with this repo
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):  # noqa: F811
    """A real tiny NITP run of train.py (tiny-dense: 2 blocks, d_model 32, target layer 1): its checkpoint, the
    trained model and projector, and a batch of validation tokens that holds document separators."""
    out = tmp_path_factory.mktemp("hf_run")
    cfg = train.TrainConfig(preset="tiny-dense", objective="nitp", data_dir=str(data_dir), out_dir=str(out / "run"),
                            device="cpu", seq_len=16, batch_size=2, global_batch_tokens=64, max_steps=6, lr=1e-2,
                            warmup_steps=2, eval_interval=0, eval_batches=0, log_interval=10, ckpt_interval=0,
                            cpu_malloc_tuning=False)
    result = train.train(cfg)
    tokens = np.fromfile(data_dir / "val.bin", dtype=np.uint16)[:64].astype(np.int64)
    x = torch.from_numpy(tokens).view(2, 32)
    assert (x == EOT).any()  # separators inside the batch: the document mask matters
    return out / "run", result.model, result.projector, x


def grads(module, names):
    return {name: p.grad.clone() for name, p in module.named_parameters() if name in names}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_nitp_through_transformers_equals_this_repos(trained_run, arch, tmp_path):
    """Same (sum, count) and gradients, on the same batch and projector weights. Tolerance: float32 with a few ulps
    of room (1e-5 relative): both compute the same function, but transformers splits our fused q/k/v and gate/up
    matmuls and orders the norm's arithmetic its own way, so sums are accumulated in another order (measured:
    <= 3e-7 relative); a mapping mistake (wrong layer, pre- vs post-norm, a missed mask) changes them by O(1)."""
    run_dir, ours, our_projector, x = trained_run
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export.export(run_dir, tmp_path / "hf", arch=arch),
                                                               dtype=torch.float32)
    n, q_rows = ours.config.n_layer, ours.config.n_head * ours.config.head_size
    for k, attach in [(1, "post_norm"), (0, "post_norm"), (n, "pre_norm")]:  # pre_norm and k = n: the hook path
        ours.zero_grad()
        our_projector.zero_grad()
        out = ours(x, layers=(k, n))
        h = out.final_hidden if attach == "post_norm" else out.layers[n]
        our_sum, our_count = nitp_loss_terms(our_projector(h), out.layers[k], shift=1,
                                             pair_valid=nitp_pair_mask(x, 1, EOT))
        our_sum.backward()
        projector = NITPHead(ours.config.d_model)
        projector.load_state_dict(our_projector.state_dict())  # the same weights, name for name
        theirs.zero_grad()
        their_sum, their_count = hf.nitp_terms(theirs, projector, x, target_layer=k, separator=EOT, attach=attach)
        their_sum.backward()

        assert their_count.item() == our_count.item() == 62 - (x[:, :-1] == EOT).sum().item()
        torch.testing.assert_close(their_sum, our_sum, rtol=1e-5, atol=0)
        pairs = [(projector.w_gate.weight.grad, our_projector.w_gate.weight.grad),
                 (projector.w_down.weight.grad, our_projector.w_down.weight.grad),
                 (theirs.model.embed_tokens.weight.grad, ours.embed.weight.grad),
                 (theirs.model.layers[0].self_attn.q_proj.weight.grad, ours.blocks[0].attn.qkv.weight.grad[:q_rows]),
                 (theirs.model.layers[n - 1].mlp.down_proj.weight.grad, ours.blocks[n - 1].mlp.down.weight.grad)]
        for got, expected in pairs:
            assert expected.abs().max() > 0
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
        with torch.no_grad():  # and the tap itself: hidden_states[k] is our layers[k] (k < n)
            hidden = theirs(x, output_hidden_states=True).hidden_states
            torch.testing.assert_close(hidden[1], ours(x, layers=(1,)).layers[1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- padding, separators, short inputs
def test_padded_positions_never_count():
    model, projector = tiny_model("llama", seed=1), NITPHead(32)
    x = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[1, 7:] = 0  # row 1: 7 real tokens, right-padded to 12
    full = hf.nitp_terms(model, projector, x[:1], target_layer=1)  # row 0 alone
    short = hf.nitp_terms(model, projector, x[1:, :7], target_layer=1)  # row 1 without its padding
    padded = hf.nitp_terms(model, projector, x, mask, target_layer=1)
    assert padded[1].item() == full[1].item() + short[1].item() == 11 + 6
    torch.testing.assert_close(padded[0], full[0] + short[0], rtol=1e-5, atol=1e-6)
    other = x.clone()
    other[1, 7:] = 0  # whatever the padding holds
    torch.testing.assert_close(hf.nitp_terms(model, projector, other, mask, target_layer=1)[0], padded[0],
                               rtol=1e-6, atol=1e-7)
    assert hf.nitp_pair_count(x, mask).item() == 17

    x[0, 3] = 5  # a separator at position 3: the pair (3, 4) crosses into the next document
    s, count = hf.nitp_terms(model, projector, x, mask, target_layer=1, separator=5)
    assert count.item() == 17 - int((x[:, :-1] == 5).logical_and(mask[:, 1:].bool()).sum())
    assert count.item() == hf.nitp_pair_count(x, mask, separator=5).item()


@pytest.mark.parametrize("case", ["T=1", "one real token"])
def test_no_pair_gives_an_exact_zero_with_zero_gradient(case):
    model, projector = tiny_model("llama", seed=2), NITPHead(32)
    if case == "T=1":
        x, mask = torch.tensor([[3], [4]]), None
    else:
        x, mask = torch.tensor([[3, 9, 9]]), torch.tensor([[1, 0, 0]])
    s, count = hf.nitp_terms(model, projector, x, mask, target_layer=1)
    assert count.item() == 0 and s.item() == 0.0
    s.backward()
    for p in [*projector.parameters(), model.model.layers[0].mlp.down_proj.weight]:
        assert p.grad is not None and not p.grad.any()


# ---------------------------------------------------------------------------- the Trainer
def needs_accelerate():
    pytest.importorskip("accelerate")  # transformers' Trainer needs it


def llama_for_training(seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config)


def random_sequences(n, length=16, real=None, seed=1):
    """n rows of random ids (a tiny dataset to memorise); real[i] real tokens in row i, the rest right padding."""
    gen, rows = torch.Generator().manual_seed(seed), []
    for i in range(n):
        ids = torch.randint(0, 96, (length,), generator=gen)
        mask = torch.zeros(length, dtype=torch.long)
        mask[:length if real is None else real[i]] = 1
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return rows


def training_args(out, **fields):
    base = dict(output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=0,
                report_to="none", use_cpu=True, seed=0, disable_tqdm=True, save_strategy="no", logging_steps=1)
    return transformers.TrainingArguments(**{**base, **fields})


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory):
    needs_accelerate()
    out = tmp_path_factory.mktemp("trainer")
    data = random_sequences(16)
    args = training_args(out, max_steps=8, logging_steps=2, save_strategy="steps", save_steps=4)
    trainer = hf.NITPTrainer(model=llama_for_training(), args=args, train_dataset=data, nitp=hf.NITPConfig())
    initial = copy.deepcopy(trainer.nitp_projector.state_dict())
    trainer.train()
    trainer.save_model(str(out / "final"))
    return trainer, initial, data, out


def test_trainer_lowers_the_loss_and_trains_the_projector(trainer_run):
    trainer, initial, data, _ = trainer_run
    assert isinstance(trainer, transformers.Trainer) and trainer.nitp_target_layer == 1  # round(0.2 * 4)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4 and all("nitp_loss" in entry for entry in logs)
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.3, logs  # CE + L_NITP, memorising 16 random rows
    assert logs[-1]["nitp_loss"] < logs[0]["nitp_loss"], logs
    assert logs[0]["nitp_loss"] == pytest.approx(1.0, abs=0.05)  # 1 - cos of a random projector: ~1 at the start
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in trainer.nitp_projector.parameters())
    assert not any(torch.equal(p, initial[name]) for name, p in trainer.nitp_projector.state_dict().items())
    metrics = trainer.evaluate(data[:4])  # evaluation reports the plain CE
    batch = {key: torch.stack([row[key] for row in data[:4]]) for key in data[0]}
    with torch.no_grad():
        assert metrics["eval_loss"] == pytest.approx(trainer.model.eval()(**batch).loss.item(), rel=1e-5)


def test_trainer_saves_a_plain_model_and_the_projector_beside_it(trainer_run):
    trainer, _, _, out = trainer_run
    final = out / "final"
    assert {"config.json", "model.safetensors", hf.PROJECTOR_WEIGHTS, hf.PROJECTOR_CONFIG} <= set(os.listdir(final))
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(str(final), output_loading_info=True)
    assert type(loaded) is transformers.LlamaForCausalLM
    assert not info["missing_keys"] and not info["unexpected_keys"]
    plain = transformers.LlamaForCausalLM(loaded.config)
    assert loaded.state_dict().keys() == plain.state_dict().keys()  # no projector keys: no inference cost
    from safetensors.torch import load_file
    stored = load_file(final / "model.safetensors")
    assert not any("nitp" in name or "w_gate" in name for name in stored)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    projector, meta = hf.load_projector(final)
    assert isinstance(projector, NITPHead)
    for name, tensor in trainer.nitp_projector.state_dict().items():
        assert torch.equal(projector.state_dict()[name], tensor), name
    assert meta == json.loads((final / hf.PROJECTOR_CONFIG).read_text())
    assert {key: meta[key] for key in ("d_model", "hidden", "kind", "target_layer", "lambda")} == \
        {"d_model": 32, "hidden": 128, "kind": "swiglu", "target_layer": 1, "lambda": 1.0}
    for step in (4, 8):  # every checkpoint has its projector too
        assert {hf.PROJECTOR_WEIGHTS, hf.PROJECTOR_CONFIG} <= set(os.listdir(out / f"checkpoint-{step}"))


def test_resuming_restores_the_projector(trainer_run, tmp_path):
    """Resumed at step 4, the run ends where the uninterrupted one did: the projector's weights come back from the
    checkpoint, its optimizer state with the model's, and (as in the run) its gradients start at 0 every step."""
    trainer, _, data, out = trainer_run
    args = training_args(tmp_path, max_steps=8, logging_steps=2, save_strategy="no")
    resumed = hf.NITPTrainer(model=llama_for_training(seed=5), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    for name, tensor in trainer.nitp_projector.state_dict().items():
        torch.testing.assert_close(resumed.nitp_projector.state_dict()[name], tensor, rtol=1e-5, atol=1e-7)
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_divides_by_the_steps_pair_count(tmp_path):
    """One SGD step on 4 rows of unequal padding: 2 micro-batches of 2 give the weights of one batch of 4, which
    needs L_NITP divided by the step's pair count, not each micro-batch's own (their counts differ)."""
    needs_accelerate()
    data = random_sequences(4, real=[16, 13, 8, 4])  # 15, 12, 7 and 3 pairs: every split into two is unequal
    after = []
    for batch, accumulate in ((4, 1), (2, 2)):
        args = training_args(tmp_path / f"b{batch}", max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0,
                             per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate)
        trainer = hf.NITPTrainer(model=llama_for_training(), args=args, train_dataset=data,
                                 nitp=hf.NITPConfig(nitp_weight=2.0))
        trainer.train()
        after.append((trainer.model.state_dict(), trainer.nitp_projector.state_dict(), trainer.state.log_history[0]))
    (model_a, projector_a, log_a), (model_b, projector_b, log_b) = after
    for a, b in ((model_a, model_b), (projector_a, projector_b)):
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7)
    assert log_b["nitp_loss"] == pytest.approx(log_a["nitp_loss"], rel=1e-4)


def test_trainer_refuses_an_optimizer_without_the_projector(tmp_path):
    needs_accelerate()
    model = llama_for_training()
    with pytest.raises(ValueError, match="lacks the projector"):
        hf.NITPTrainer(model=model, args=training_args(tmp_path, max_steps=1), train_dataset=random_sequences(4),
                       optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
    projector = hf.build_projector(model)
    optimizer = torch.optim.SGD([*model.parameters(), *projector.parameters()], lr=0.1)
    trainer = hf.NITPTrainer(model=model, args=training_args(tmp_path, max_steps=1),
                             train_dataset=random_sequences(4), optimizers=(optimizer, None), nitp_projector=projector)
    assert trainer.nitp_projector is projector


# ---------------------------------------------------------------------------- data parallelism
def data_parallel_run(out, world):
    """Two optimizer steps (SGD, clipped) on 8 rows of unequal padding: 4 rows a step, split over `world`
    processes as 1 row per process and micro-batch (world 2: gradient accumulation over 2) or one batch of 4."""
    data = random_sequences(8, real=[16, 13, 8, 4, 16, 11, 6, 9])
    args = training_args(out, max_steps=2, optim="sgd", learning_rate=0.5, per_device_train_batch_size=4 // (2 * world)
                         if world > 1 else 4, gradient_accumulation_steps=2 if world > 1 else 1,
                         ddp_backend="gloo" if world > 1 else None)
    trainer = hf.NITPTrainer(model=llama_for_training(), args=args, train_dataset=data,
                             nitp=hf.NITPConfig(nitp_weight=2.0))
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    state = {"model": trainer.model.state_dict(), "projector": trainer.nitp_projector.state_dict(),
             "wrapped": type(trainer._nitp_ddp).__name__, "logs": trainer.state.log_history}
    torch.save(state, Path(out) / f"rank{rank}.pt")
    return state


@pytest.mark.slow
def test_ddp_over_two_processes_matches_one_process(tmp_path):
    """torchrun, 2 CPU processes (gloo on the loopback): the projector is wrapped in DDP (its gradients averaged,
    skipped on accumulation micro-batches), L_NITP is divided by the pair count of all processes' micro-batches:
    both processes end with the weights of one process that saw the same 4 rows per step in one batch."""
    needs_accelerate()
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(f"import sys\nsys.path[:0] = [{str(REPO / 'tests')!r}, {str(REPO)!r}]\n"
                      "from test_hf import data_parallel_run\n"
                      f"data_parallel_run({str(tmp_path / 'ddp')!r}, 2)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", str(script)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = data_parallel_run(tmp_path / "one", 1)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert alone["wrapped"] == "NoneType" and all(r["wrapped"] == "DistributedDataParallel" for r in ranks)
    for key in ("model", "projector"):
        for name, tensor in alone[key].items():
            assert torch.equal(ranks[0][key][name], ranks[1][key][name]), name  # the processes agree
            torch.testing.assert_close(ranks[0][key][name], tensor, rtol=1e-4, atol=1e-6)  # and match one process
    logs = [[entry["nitp_loss"] for entry in state["logs"] if "nitp_loss" in entry] for state in (alone, ranks[0])]
    assert logs[1] == pytest.approx(logs[0], rel=1e-4) and len(logs[0]) == 2
