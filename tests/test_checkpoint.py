"""Tests for checkpoint.py: the DCP layout, the completion marker, a crash mid-save, and load_model (one process,
no process group), on tiny models."""

import pytest
import torch
import torch.distributed.checkpoint as dcp

from model import GPT, get_preset
from support import checkpoint

VOCAB = 50304


def write_run(out_dir, model, step, **meta):
    """A checkpoint as train.py writes it (the model part of the state), from one process."""
    weights = {f"{checkpoint.MODEL_KEY}.{k}": v for k, v in model.state_dict().items()}
    return checkpoint.save(out_dir, step, {"model": weights}, {"model_config": model.config.to_dict(), **meta})


def test_save_then_load_model_gives_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny-moe")).eval()
    path = write_run(tmp_path, model, 3, tokenizer="gpt2")
    assert path == tmp_path / "checkpoints" / "step_0000003" and (path / "meta.json").is_file()
    assert (path / ".metadata").is_file() and any(p.suffix == ".distcp" for p in path.iterdir())
    for where in (tmp_path, path):  # a run directory or the checkpoint itself
        loaded, meta = checkpoint.load_model(where)
        idx = torch.randint(0, VOCAB, (1, 6))
        torch.testing.assert_close(loaded.eval()(idx).logits, model(idx).logits, rtol=0, atol=0)
        assert meta["step"] == 3 and meta["tokenizer"] == "gpt2"
    assert loaded.lm_head.weight is not loaded.embed.weight or loaded.config.tie_embeddings


def test_tied_embedding_stays_tied_after_loading(tmp_path):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny-dense"))
    write_run(tmp_path, model, 1)
    loaded, _ = checkpoint.load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.embed.weight and torch.equal(loaded.embed.weight, model.embed.weight)


def test_newer_checkpoint_replaces_older_and_latest_picks_it(tmp_path):
    model = GPT(get_preset("tiny-dense"))
    write_run(tmp_path, model, 2)
    write_run(tmp_path, model, 4)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step_0000004"]  # the older is gone
    (tmp_path / "checkpoints" / "step_0000009").mkdir()  # no meta.json: never complete, never taken
    assert checkpoint.latest(tmp_path).name == "step_0000004"


def test_a_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny-dense"))
    write_run(tmp_path, model, 5)
    real_save = dcp.save

    def torn_save(state, checkpoint_id, **kwargs):  # writes some of the shards, then the process dies
        real_save({"model": {"gpt.embed.weight": state["model"]["gpt.embed.weight"]}}, checkpoint_id=checkpoint_id,
                  **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(dcp, "save", torn_save)
    with torch.no_grad():
        model.embed.weight.zero_()
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path, model, 6)
    assert (tmp_path / "checkpoints" / "step_0000006.tmp").is_dir()  # the torn one, under its temporary name
    loaded, meta = checkpoint.load_model(tmp_path)
    assert meta["step"] == 5 and loaded.embed.weight.abs().sum() > 0  # the previous weights, intact
    monkeypatch.setattr(dcp, "save", real_save)
    write_run(tmp_path, model, 6)  # the next save cleans the torn temporary up
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000006"]


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.py"):
        checkpoint.load_model(tmp_path / "missing")
    model = GPT(get_preset("tiny-dense"))
    checkpoint.save(tmp_path, 1, {"model": {"gpt.embed.weight": model.embed.weight}}, {"step": 1})
    with pytest.raises(ValueError, match="model_config"):
        checkpoint.load_model(tmp_path)
