"""Tests for checkpoint.py: the DCP layout, the completion marker, a crash mid-save, and load_model (one process,
no process group), on tiny models: a damaged newer checkpoint is refused, not skipped, and one that a run still
saving deletes while it is read is read again from the newest."""

import json
import os
import shutil
from pathlib import Path

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


def next_save(ckpt_dir) -> "os.PathLike":
    """What a run still training does meanwhile to the checkpoint being read: saves step N + 1 (here step N's files
    under the next step, as checkpoint.save writes it: .tmp name, meta.json last, rename), then deletes step N."""
    ckpt_dir = checkpoint.Path(ckpt_dir)
    meta = json.loads((ckpt_dir / checkpoint.META).read_text())
    body = {k: v for k, v in meta.items() if k != checkpoint.META_DIGEST} | {"step": meta["step"] + 1}
    new = checkpoint.step_dir(ckpt_dir.parent.parent, body["step"])
    tmp = new.with_name(new.name + ".tmp")
    shutil.copytree(ckpt_dir, tmp)
    (tmp / checkpoint.META).write_text(json.dumps({**body, checkpoint.META_DIGEST: checkpoint.meta_digest(body)}))
    os.replace(tmp, new)
    shutil.rmtree(ckpt_dir)
    return new


def test_newer_checkpoint_replaces_older_and_latest_picks_it(tmp_path):
    model = GPT(get_preset("tiny-dense"))
    write_run(tmp_path, model, 2)
    write_run(tmp_path, model, 4)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step_0000004"]  # the older is gone
    (tmp_path / "checkpoints" / "step_0000009.tmp").mkdir()  # a save under way: not complete, not damage
    (tmp_path / "checkpoints" / "step_0000001").mkdir()  # damage older than the newest: no reader would take it
    assert checkpoint.latest(tmp_path).name == "step_0000004"


def test_a_kill_while_an_older_checkpoint_is_deleted_leaves_no_damage(tmp_path, monkeypatch):
    """An older checkpoint is renamed to a .tmp name before it is deleted: a kill half-way through the delete (its
    meta.json gone first) leaves a stale temporary, not a step folder without meta.json that --resume would refuse
    as damage. The same step saved twice keeps the complete copy on disk and drops the new one."""
    model = GPT(get_preset("tiny-dense"))
    write_run(tmp_path, model, 2)
    real_rmtree = checkpoint.shutil.rmtree

    def killed_mid_delete(path, *a, **k):
        if (Path(path) / checkpoint.META).is_file():
            (Path(path) / checkpoint.META).unlink()
            raise SystemExit("killed")
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(SystemExit):
        write_run(tmp_path, model, 4)
    monkeypatch.undo()
    assert checkpoint.incomplete_checkpoints(tmp_path) == []
    assert checkpoint.latest(tmp_path).name == "step_0000004"
    first = (tmp_path / "checkpoints" / "step_0000004" / checkpoint.META).read_bytes()
    write_run(tmp_path, model, 4)  # the stale temporary goes; step 4 stays as it was
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000004"]
    assert (tmp_path / "checkpoints" / "step_0000004" / checkpoint.META).read_bytes() == first


def test_a_damaged_newer_checkpoint_is_refused_not_skipped(tmp_path):
    """A step_N folder without meta.json newer than the newest complete checkpoint is damage (saves use .tmp names):
    every loader refuses it as train.py --resume does, instead of reading the older weights."""
    model = GPT(get_preset("tiny-dense"))
    write_run(tmp_path, model, 4)
    damaged = tmp_path / "checkpoints" / "step_0000009"
    damaged.mkdir()
    for read in (checkpoint.latest, checkpoint.load_model):
        with pytest.raises(ValueError, match=f"^{damaged} has no meta.json: a damaged checkpoint"):
            read(tmp_path)
    assert damaged.is_dir() and checkpoint.latest(tmp_path / "checkpoints" / "step_0000004") is not None


def _deleted_while(phase, monkeypatch, times):
    """Make the run save its next checkpoint (deleting the one being read) `times` times, at `phase` of reading."""
    saves = []

    def saving(real, ckpt_of):
        def spy(*args, **kwargs):
            if len(saves) < times:
                saves.append(next_save(ckpt_of(*args)))
            return real(*args, **kwargs)
        return spy

    if phase == "meta.json":
        monkeypatch.setattr(checkpoint, "read_meta", saving(checkpoint.read_meta, lambda ckpt: ckpt))
    elif phase == "checksums":
        monkeypatch.setattr(checkpoint, "verify", saving(checkpoint.verify, lambda ckpt, meta: ckpt))
    else:  # DCP reading the shards: FileNotFoundError inside its CheckpointException
        real = checkpoint.SafeReader.check_plain_items
        monkeypatch.setattr(checkpoint.SafeReader, "check_plain_items", lambda self: (
            real(self), saves.append(next_save(self.path)) if len(saves) < times else None))
    return saves


@pytest.mark.parametrize("phase", ["meta.json", "checksums", "shards"])
def test_a_checkpoint_deleted_while_it_is_read_is_read_again_from_the_newest(tmp_path, monkeypatch, phase):
    torch.manual_seed(0)
    model = GPT(get_preset("tiny-dense"))
    write_run(tmp_path, model, 4)
    saves = _deleted_while(phase, monkeypatch, times=1)
    loaded, meta = checkpoint.load_model(tmp_path)
    assert [p.name for p in saves] == ["step_0000005"] and meta["step"] == 5
    assert torch.equal(loaded.embed.weight, model.embed.weight)


@pytest.mark.parametrize("phase", ["meta.json", "checksums", "shards"])
def test_a_run_saving_faster_than_it_is_read_is_one_plain_error(tmp_path, monkeypatch, phase):
    write_run(tmp_path, GPT(get_preset("tiny-dense")), 4)
    _deleted_while(phase, monkeypatch, times=checkpoint.RELOADS)
    with pytest.raises(checkpoint.RunStillSaving, match=f"^the run in {tmp_path} is writing checkpoints.*; retry"):
        checkpoint.load_model(tmp_path)
    _deleted_while(phase, monkeypatch, times=1)  # a checkpoint folder read directly: nothing newer to read instead
    with pytest.raises(FileNotFoundError, match="step_0000007 was deleted while it was read"):
        checkpoint.load_model(checkpoint.latest(tmp_path))


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


def test_a_shard_gone_while_dcp_reads_it_is_a_plain_file_not_found(tmp_path, monkeypatch):
    """DCP wraps the FileNotFoundError in a CheckpointException, a BaseException that the commands' `except` would
    miss (a traceback): it is surfaced as the FileNotFoundError, naming the checkpoint."""
    ckpt = write_run(tmp_path, GPT(get_preset("tiny-dense")), 4)
    real = checkpoint.SafeReader.check_plain_items
    monkeypatch.setattr(checkpoint.SafeReader, "check_plain_items", lambda self: (
        real(self), [p.unlink() for p in ckpt.glob("*.distcp")]))
    with pytest.raises(FileNotFoundError, match=f"reading checkpoint {ckpt}: No such file"):
        checkpoint.load_model(ckpt)
