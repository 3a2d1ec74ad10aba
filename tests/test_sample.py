"""Tests for sample.py: samples and separators, seeds, temperature and top_k, the padded vocabulary, the context
cropped to block_size, MoE and compacted-vocabulary runs, a run still saving read from its newest checkpoint, and
every bad input (a damaged newer checkpoint and a seed out of range too) as one stderr line with exit code 2.

Tiny runs trained here on CPU (train.train) on test_train's synthetic data (GPT-2 ids 10..73 counting upwards,
EOT 50256); one of them on the same data compacted (compact.compact), to exercise the map.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_checkpoint import next_save
from test_checkpoint_safety import craft_metadata
from test_train import data_dir, tiny_config  # noqa: F401 (data_dir is a fixture)

import sample
import train
from support import checkpoint, compact, tokenizer

REPO = Path(__file__).resolve().parents[1]
PROMPT = "+,-./"  # GPT-2 ids 10, 12095 (",-"), 19571 ("./")
SHORT = "+A"  # GPT-2 ids 10 and 32: both in the compacted vocabulary (BPE merges no pair of them)
GPT2 = tokenizer.GPT2_VOCAB_SIZE


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tiny models run 10-50x faster on a busy 2-core machine than with two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):  # noqa: F811
    """{"dense", "moe", "compact"}: run folders of tiny models trained a few steps."""
    root = tmp_path_factory.mktemp("sample_runs")
    small = root / "data-compact"  # the synthetic data with its 65 ids renumbered 0..64
    shutil.copytree(data_dir, small)
    meta = {**json.loads((small / "meta.json").read_text()), "dtype": "uint16",
            "tokenizer_fingerprint": tokenizer.load_tokenizer("gpt2").fingerprint}
    (small / "meta.json").write_text(json.dumps(compact.compact(small, meta)))
    fields = dict(objective="ntp", log_interval=10, eval_batches=0, cpu_malloc_tuning=False)
    train.train(tiny_config(root / "dense", data_dir, max_steps=30, **fields))
    train.train(tiny_config(root / "moe", data_dir, preset="tiny-moe", max_steps=2, **fields))
    train.train(tiny_config(root / "compact", small, max_steps=2, model_overrides={"vocab_size": 128}, **fields))
    return {name: root / name for name in ("dense", "moe", "compact")}


def cli(capsys, *argv):
    """(exit code, stdout, stderr) of sample.main on the CPU."""
    code = sample.main([str(a) for a in argv] + ["--device=cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def texts(run, **fields):
    return list(sample.samples(run, sample.SampleConfig(device="cpu", **fields)))


def greedy(model, ids, steps, vocab=GPT2):
    """Argmax decoding computed here, with nanoGPT's crop to the last block_size tokens."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids[-model.config.block_size:]])).logits[0, -1, :vocab]
            ids.append(int(logits.argmax()))
    return ids


# ---------------------------------------------------------------------------- samples
def test_prints_num_samples_samples_each_followed_by_a_separator(runs, capsys):
    code, out, err = cli(capsys, runs["dense"], f"--start={PROMPT}", "--num_samples=3", "--max_new_tokens=8")
    assert code == 0 and err == ""
    assert out.endswith(sample.SEPARATOR + "\n") and out.count("\n" + sample.SEPARATOR + "\n") == 3
    printed = out.split("\n" + sample.SEPARATOR + "\n")[:-1]
    assert len(printed) == 3 and all(text.startswith(PROMPT) for text in printed)


def test_a_prompt_file_and_the_script_itself(runs, tmp_path):
    (tmp_path / "prompt.txt").write_text(PROMPT)
    done = subprocess.run([sys.executable, str(REPO / "sample.py"), str(runs["dense"]), "--num_samples=1",
                           "--max_new_tokens=8", f"--start=FILE:{tmp_path / 'prompt.txt'}", "--device=cpu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith(PROMPT) and done.stdout.endswith(f"\n{sample.SEPARATOR}\n")


def test_the_same_seed_gives_the_same_text_and_another_seed_another(runs):
    hot = dict(start=PROMPT, num_samples=2, max_new_tokens=12, temperature=2.0, top_k=None)
    first = texts(runs["dense"], seed=7, **hot)
    assert texts(runs["dense"], seed=7, **hot) == first and first[0] != first[1]
    assert texts(runs["dense"], seed=8, **hot) != first
    assert texts(runs["dense"], seed=7, **{**hot, "num_samples": 1}) == first[:1]  # one stream, sample by sample


def test_an_empty_prompt_starts_from_the_end_of_text_token(runs):
    assert texts(runs["dense"], start="", max_new_tokens=3, num_samples=1)[0].startswith("<|endoftext|>")


def test_top_k_1_is_argmax_decoding_and_a_tiny_temperature_too(runs):
    model, _ = checkpoint.load_model(runs["dense"])
    prompt = tokenizer.get_tokenizer().encode_ordinary(PROMPT)
    expected = tokenizer.get_tokenizer().decode(greedy(model.eval(), prompt, 12))
    for seed in (1, 2):
        assert texts(runs["dense"], start=PROMPT, max_new_tokens=12, top_k=1, seed=seed, num_samples=2) == \
            [expected] * 2
    cold = texts(runs["dense"], start=PROMPT, max_new_tokens=12, temperature=1e-4, top_k=None, num_samples=1)
    assert cold == [expected]


def test_every_drawn_token_is_among_the_top_k_of_its_context(runs):
    model, _ = checkpoint.load_model(runs["dense"])
    model.eval()
    start = torch.tensor([tokenizer.get_tokenizer().encode_ordinary(PROMPT)])
    ids = sample.generate(model, start, 30, temperature=3.0, top_k=3, vocab_size=GPT2,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits[0, start.shape[1] - 1:, :GPT2]  # (30, V): what each draw saw
    top3, drawn = logits.topk(3).indices, ids[0, start.shape[1]:]
    assert all(int(t) in top3[i].tolist() for i, t in enumerate(drawn))
    assert (drawn != top3[:, 0]).any()  # and not only the argmax: temperature 3 spreads the draws over the 3


class PaddingLover(torch.nn.Module):
    """A model whose head favours the padding rows 50,257..50,303 (e^15 each, against 1 for a real id)."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"block_size": 8, "vocab_size": 50304})()
        self.lm_head = torch.nn.Linear(1, 50304, bias=False)
        torch.nn.init.zeros_(self.lm_head.weight)
        self.lm_head.weight.data[GPT2:] = 15.0

    def forward(self, idx, compute_logits=True):
        return type("Out", (), {"final_hidden": torch.ones(*idx.shape, 1)})()


def test_ids_beyond_the_tokenizers_vocabulary_are_never_drawn(runs):
    fake, start, gen = PaddingLover(), torch.zeros(1, 1, dtype=torch.long), torch.Generator().manual_seed(0)
    assert (sample.generate(fake, start, 20, top_k=None, generator=gen)[0, 1:] >= GPT2).all()  # unmasked
    assert sample.generate(fake, start, 60, top_k=None, vocab_size=GPT2, generator=gen)[0].max() < GPT2
    assert sample.generate(fake, start, 20, top_k=200, vocab_size=GPT2, generator=gen)[0].max() < GPT2
    model, _ = checkpoint.load_model(runs["dense"])
    ids = sample.generate(model.eval(), start, 30, temperature=5.0, vocab_size=GPT2, generator=gen)
    assert ids.max() < GPT2 and tokenizer.get_tokenizer().decode(ids[0].tolist())  # it decodes


def test_a_context_longer_than_block_size_is_cropped(runs, capsys):
    model, _ = checkpoint.load_model(runs["dense"])
    assert model.config.block_size == 64
    expected = greedy(model.eval(), [10, 32], 80)  # 82 tokens: the last 18 see a cropped context
    code, out, err = cli(capsys, runs["dense"], f"--start={SHORT}", "--max_new_tokens=80", "--num_samples=1",
                         "--top_k=1")
    assert code == 0 and err == "" and out == tokenizer.get_tokenizer().decode(expected) + f"\n{sample.SEPARATOR}\n"


def test_a_moe_run_samples(runs, capsys):
    code, out, err = cli(capsys, runs["moe"], f"--start={PROMPT}", "--num_samples=2", "--max_new_tokens=10")
    assert code == 0 and err == "" and out.count(sample.SEPARATOR + "\n") == 2


def test_a_compacted_run_samples_through_its_map(runs, capsys):
    model, meta = checkpoint.load_model(runs["compact"])
    tok, vocab = sample.run_tokenizer(meta, model.config.vocab_size)
    assert isinstance(tok, compact.CompactTokenizer) and (vocab, model.config.vocab_size) == (65, 128)
    code, out, err = cli(capsys, runs["compact"], f"--start={SHORT}", "--num_samples=2", "--max_new_tokens=20")
    assert code == 0 and err == "" and out.count(sample.SEPARATOR + "\n") == 2
    kept = {tokenizer.get_tokenizer().decode([i]) for i in range(10, 74)}  # the characters of its 64 text ids
    body = out.replace(sample.SEPARATOR + "\n", "").replace("<|endoftext|>", "").replace("\n", "")
    assert set(body) <= kept  # read as GPT-2's own ids, new ids 0..9 would be '!'..'*'


# ---------------------------------------------------------------------------- bad input
def corrupt(run, tmp):
    shard = next(checkpoint.latest(run).glob("*.distcp"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return [run]


def empty_prompt(run, tmp):
    (tmp / "empty.txt").write_text("")
    return [run, f"--start=FILE:{tmp / 'empty.txt'}"]


def damaged_newer(run, tmp):
    """step_N without meta.json beside the complete checkpoint, newer: damage, refused as --resume refuses it."""
    damaged = checkpoint.step_dir(run, 999)
    shutil.copytree(checkpoint.latest(run), damaged)
    (damaged / checkpoint.META).unlink()
    return [run]


BAD = {  # name: (the arguments, given a copy of the dense run and a tmp folder; words its one line must hold)
    "missing run folder": (lambda run, tmp: [tmp / "nowhere"], "no run folder"),
    "no checkpoint": (lambda run, tmp: [tmp], "no complete checkpoint in {tmp}/checkpoints: {tmp} is not a train.py "
                                              "run folder (or its run has not saved yet); pass the --out_dir of a run"),
    "corrupted": (corrupt, "is corrupted"),
    "crafted": (lambda run, tmp: [run] if craft_metadata(run, tmp / "MARKER") else [], "refused to load"),
    "temperature 0": (lambda run, tmp: [run, "--temperature=0"], "--temperature=0.0 must be > 0"),
    "temperature < 0": (lambda run, tmp: [run, "--temperature=-1"], "--temperature=-1.0 must be > 0"),
    "top_k 0": (lambda run, tmp: [run, "--top_k=0"], "--top_k=0 must be >= 1"),
    "top_k 0, written --top_k 0": (lambda run, tmp: [run, "--top_k", "0"], "--top_k=0 must be >= 1"),
    "max_new_tokens 0": (lambda run, tmp: [run, "--max_new_tokens=0"], "--max_new_tokens=0 must be >= 1"),
    "num_samples 0": (lambda run, tmp: [run, "--num_samples=0"], "--num_samples=0 must be >= 1"),
    "unknown flag": (lambda run, tmp: [run, "--topk=5"], "unknown option '--topk=5'"),
    "mistyped value": (lambda run, tmp: [run, "--top_k=many"], "expects int or none"),
    "no run folder given": (lambda run, tmp: [], "expected one run folder, got 0"),
    "two run folders": (lambda run, tmp: [run, run], "expected one run folder, got 2"),
    "missing prompt file": (lambda run, tmp: [run, f"--start=FILE:{tmp / 'none.txt'}"], "no prompt file"),
    "empty prompt file": (empty_prompt, "is empty"),
    "damaged newer checkpoint": (damaged_newer, "{tmp}/run/checkpoints/step_0000999 has no meta.json: a damaged "
                                                "checkpoint (saves write under a .tmp name)"),
    "seed beyond 2**64 - 1": (lambda run, tmp: [run, "--seed=99999999999999999999"],
                              "--seed=99999999999999999999 must be in [0, 18446744073709551615]"),
    "negative seed": (lambda run, tmp: [run, "--seed=-1"], "--seed=-1 must be in [0, 18446744073709551615]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_on_stderr_and_exit_2(runs, tmp_path, capsys, case):
    make, words = BAD[case]
    run = Path(shutil.copytree(runs["dense"], tmp_path / "run"))
    argv = make(run, tmp_path)
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("sample.py: error: ") and words.format(tmp=tmp_path) in err, err
    assert not (tmp_path / "MARKER").exists()
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before


def test_a_run_still_saving_is_sampled_from_its_newest_checkpoint(runs, tmp_path, capsys, monkeypatch):
    """The checkpoint picked is replaced by the run's next save while it is read: the newest is read instead (the
    same weights here, so the same text); a run that does so every time gets one line saying to retry."""
    run = Path(shutil.copytree(runs["dense"], tmp_path / "run"))
    argv = [run, f"--start={PROMPT}", "--num_samples=1", "--max_new_tokens=4", "--seed=3"]
    expected = cli(capsys, *argv)
    real, saves = checkpoint.verify, []

    def verify_while_saving(ckpt, meta, times=1):
        if len(saves) < times:
            saves.append(next_save(ckpt))
        return real(ckpt, meta)

    monkeypatch.setattr(checkpoint, "verify", verify_while_saving)
    assert cli(capsys, *argv) == expected and expected[0] == 0 and len(saves) == 1
    monkeypatch.setattr(checkpoint, "verify", lambda ckpt, meta: verify_while_saving(ckpt, meta, times=100))
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"the run in {run} is writing checkpoints faster than they can be read" in err and "retry" in err


def test_a_prompt_a_compacted_vocabulary_cannot_encode_is_named(runs, capsys):
    code, out, err = cli(capsys, runs["compact"], "--start=\nzebra")  # the default "\n" is not in its corpus either
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sample.py: error: the prompt '\\nzebra' cannot be encoded for this run: ")
    assert "not in the compacted vocabulary" in err and "'\\n' (id 198)" in err
