"""Tests that loading a checkpoint never runs code from it: crafted checkpoints (a `.metadata` pickle that calls
os.system, an optimizer item replaced by such a pickle, file names that point outside the checkpoint), each with
meta.json's checksums recomputed so that only the new guards stand in the way, are refused by train.py --resume,
eval.py and export.py with exit code 2 and one line naming the file, and the code never runs. A checkpoint
written by train.py still loads bit-identically. One tiny real run (2 steps, tiny-dense, NITP) is shared."""

import dataclasses
import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from test_train import data_dir  # noqa: F401 (a fixture)

import eval as ev
import sample
import train
from support import checkpoint
from tools import export

EOT = 50256
FIELDS = dict(preset="tiny-dense", objective="nitp", device="cpu", seq_len=16, batch_size=2, global_batch_tokens=64,
              lr=1e-2, warmup_steps=1, eval_interval=0, eval_batches=0, log_interval=10, ckpt_interval=0,
              cpu_malloc_tuning=False)
ITEM = "optimizer.param_groups.0.weight_decay"  # a non-tensor item: DCP unpickles it with torch.load


class RunsCommand:
    """Unpickling this runs `touch MARKER`: the payload of every crafted file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


# ---------------------------------------------------------------------------- fixtures and helpers


def train_config(out_dir, data_dir, **fields):
    return train.TrainConfig(**{**FIELDS, "data_dir": str(data_dir), "out_dir": str(out_dir), **fields})


def train_argv(out_dir, data_dir, **fields):
    """train.py's command line for train_config(out_dir, data_dir, **fields)."""
    values = {**FIELDS, "data_dir": str(data_dir), "out_dir": str(out_dir), **fields}
    return [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A real 2-step run (model, projector, AdamW state, RNG) and the straight 3-step run to compare a resume with."""
    root = tmp_path_factory.mktemp("runs")
    train.train(train_config(root / "two", data_dir, max_steps=2))
    three = train.train(train_config(root / "three", data_dir, max_steps=3))
    return root / "two", three


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the 2-step run, free to tamper with."""
    return Path(shutil.copytree(trained[0], tmp_path / "run"))


def rehash(ckpt_dir):
    """Recompute meta.json's sha256 entries and its own digest, as someone crafting a checkpoint would."""
    meta_path = ckpt_dir / checkpoint.META
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = {name: hashlib.sha256((ckpt_dir / name).read_bytes()).hexdigest() for name in meta["sha256"]}
    write_meta(ckpt_dir, meta)


def write_meta(ckpt_dir, meta):
    """meta.json with its digest recomputed (checkpoint.meta_digest), so that only the guard tested stands."""
    (ckpt_dir / checkpoint.META).write_text(json.dumps({**meta, checkpoint.META_DIGEST: checkpoint.meta_digest(meta)}))


def read_our_metadata(ckpt_dir):
    with open(ckpt_dir / checkpoint.DCP_METADATA, "rb") as f:
        return pickle.load(f)  # the test's own, trusted file


def write_metadata(ckpt_dir, metadata):
    (ckpt_dir / checkpoint.DCP_METADATA).write_bytes(pickle.dumps(metadata))
    rehash(ckpt_dir)


def craft_metadata(run_dir, marker) -> Path:
    """(a) `.metadata` replaced by a pickle that runs a command; returns the crafted file."""
    ckpt = checkpoint.latest(run_dir)
    (ckpt / checkpoint.DCP_METADATA).write_bytes(pickle.dumps(RunsCommand(marker)))
    rehash(ckpt)
    return ckpt / checkpoint.DCP_METADATA


def craft_item(run_dir, marker) -> Path:
    """(b) DCP's own metadata, but ITEM points to a torch.save'd object that runs a command, appended to the
    shard; returns the shard."""
    ckpt = checkpoint.latest(run_dir)
    metadata = read_our_metadata(ckpt)
    index = next(i for i in metadata.storage_data if i.fqn == ITEM)
    info = metadata.storage_data[index]
    shard = ckpt / info.relative_path
    payload = io.BytesIO()
    torch.save(RunsCommand(marker), payload)
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(payload.getvalue())
    metadata.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(payload.getvalue()))
    write_metadata(ckpt, metadata)
    return shard


CRAFTS = {"metadata": craft_metadata, "item": craft_item}


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def run_command(command, run_dir, data_dir, tmp_path):
    """Exit code of train.py --resume / eval.py / sample.py / export.py on run_dir."""
    if command == "train":
        return train.main(train_argv(run_dir, data_dir, max_steps=3, resume=True))
    if command == "eval":
        return ev.main([str(run_dir), f"--out={tmp_path / 'report'}", "--device=cpu", "--probe=false", "--mc=false"])
    if command == "sample":
        return sample.main([str(run_dir), "--device=cpu", "--max_new_tokens=2", "--num_samples=1"])
    return export.main([str(run_dir), f"--out={tmp_path / 'hf'}"])


# ---------------------------------------------------------------------------- crafted checkpoints
@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_the_crafted_files_do_run_code_when_unpickled_plainly(run, tmp_path, craft):
    """The control: the payloads are live, so the refusals below are what keeps them from running."""
    marker = tmp_path / "MARKER"
    crafted = CRAFTS[craft](run, marker)
    if craft == "metadata":
        pickle.loads(crafted.read_bytes())
    else:
        info = next(v for i, v in read_our_metadata(crafted.parent).storage_data.items() if i.fqn == ITEM)
        raw = crafted.read_bytes()[info.offset:info.offset + info.length]
        torch.load(io.BytesIO(raw), weights_only=False)
    assert marker.exists()
    checkpoint.verify(crafted.parent, checkpoint.read_meta(crafted.parent))  # the checksums match: no help there


@pytest.mark.parametrize("command", ["train", "eval", "sample", "export"])
@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_every_command_refuses_a_crafted_checkpoint(run, data_dir, tmp_path, capsys, craft, command):
    marker = tmp_path / "MARKER"
    crafted = CRAFTS[craft](run, marker)
    before = snapshot(run)
    capsys.readouterr()
    assert run_command(command, run, data_dir, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    script = "tools/export.py" if command == "export" else f"{command}.py"
    assert err[0].startswith(f"{Path(script).name}: error: {crafted}: refused to load: "), err[0]
    assert "posix.system" in err[0] and err[0].endswith(checkpoint.NOT_OURS)
    if craft == "item":
        assert ITEM in err[0]
    assert not marker.exists()
    assert snapshot(run) == before  # nothing written into the run either
    assert not (tmp_path / "hf").exists() and not (tmp_path / "report").exists()


def test_the_planner_refuses_an_item_that_was_not_checked_beforehand(run, data_dir, tmp_path, capsys, monkeypatch):
    """The second line of defence: with the up-front check of every item switched off, DCP's read itself
    (SafeLoadPlanner.load_bytes) refuses the item, and the refusal still comes out as one plain line."""
    monkeypatch.setattr(checkpoint.SafeReader, "check_plain_items", lambda self: None)
    marker = tmp_path / "MARKER"
    shard = craft_item(run, marker)
    capsys.readouterr()
    assert run_command("train", run, data_dir, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"train.py: error: {shard}: refused to load: its item {ITEM}"), err
    assert not marker.exists()


def test_saved_keys_and_load_model_refuse_it_too(run, tmp_path):
    marker = tmp_path / "MARKER"
    crafted = craft_metadata(run, marker)
    for read in (lambda: checkpoint.saved_keys(crafted.parent), lambda: checkpoint.load_model(run)):
        with pytest.raises(checkpoint.RefusedCheckpoint, match="posix.system") as refused:
            read()
        assert isinstance(refused.value, ValueError) and str(refused.value).startswith(str(crafted))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["/etc/hostname", "../step_0000001/.metadata", "sub/../../x", "..", "a/b"])
def test_file_names_outside_the_checkpoint_in_meta_json_are_refused(run, data_dir, tmp_path, capsys, name):
    ckpt = checkpoint.latest(run)
    meta = json.loads((ckpt / checkpoint.META).read_text())
    meta["sha256"][name] = "0" * 64
    write_meta(ckpt, meta)
    with pytest.raises(checkpoint.RefusedCheckpoint, match=f"{ckpt / checkpoint.META}: refused to load: .*{name}"):
        checkpoint.load_model(run)
    capsys.readouterr()
    assert run_command("export", run, data_dir, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt / checkpoint.META) in err[0] and checkpoint.NOT_OURS in err[0]


def test_meta_json_without_the_metadata_checksum_is_refused(run):
    ckpt = checkpoint.latest(run)
    meta = json.loads((ckpt / checkpoint.META).read_text())
    del meta["sha256"][checkpoint.DCP_METADATA]
    write_meta(ckpt, meta)
    with pytest.raises(checkpoint.RefusedCheckpoint, match=r"no checksum for \.metadata"):
        checkpoint.load_model(run)


@pytest.mark.parametrize("target", ["../../log.jsonl", "/etc/hostname", "not_listed.distcp"])
def test_metadata_pointing_outside_the_checkpoints_own_files_is_refused(run, target):
    ckpt = checkpoint.latest(run)
    metadata = read_our_metadata(ckpt)
    index = next(iter(metadata.storage_data))
    metadata.storage_data[index] = dataclasses.replace(metadata.storage_data[index], relative_path=target)
    write_metadata(ckpt, metadata)
    with pytest.raises(checkpoint.RefusedCheckpoint, match=f"{ckpt / checkpoint.DCP_METADATA}: .*{target}"):
        checkpoint.load_model(run)


def test_metadata_that_is_not_dcps_is_refused(run):
    ckpt = checkpoint.latest(run)
    (ckpt / checkpoint.DCP_METADATA).write_bytes(pickle.dumps({"storage_data": {}}))
    rehash(ckpt)
    with pytest.raises(checkpoint.RefusedCheckpoint, match="holds a dict, not DCP metadata"):
        checkpoint.load_model(run)
    (ckpt / checkpoint.DCP_METADATA).write_bytes(b"\x80\x04garbage")
    rehash(ckpt)
    with pytest.raises(checkpoint.RefusedCheckpoint, match="not DCP metadata"):
        checkpoint.load_model(run)


# ---------------------------------------------------------------------------- legitimate checkpoints
def test_a_real_checkpoint_resumes_bit_identically_and_evaluates(run, trained, data_dir, tmp_path):
    _, straight = trained
    assert train.main(train_argv(run, data_dir, max_steps=3, resume=True)) == 0
    resumed, _ = checkpoint.load_model(run)
    for name, tensor in straight.model.state_dict().items():  # 2 steps + resume 1 == 3 steps straight
        assert torch.equal(resumed.state_dict()[name], tensor), name
    keys = checkpoint.saved_keys(checkpoint.latest(run))
    assert ITEM in keys and any(k.startswith("model.projector.") for k in keys)
    assert ev.main([str(run), f"--out={tmp_path / 'report'}", "--device=cpu", "--probe=false", "--mc=false",
                    "--max_tokens=200", "--num_pairs=200"]) == 0
    assert (tmp_path / "report" / "report.md").is_file()


def test_the_optimizers_plain_values_and_every_dtype_load_back(tmp_path):
    values = {"lr": 0.01, "betas": (0.9, 0.95), "fused": None, "amsgrad": False, "params": ["a.weight", "b.bias"],
              "step": 7, "name": "adamw"}
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8,
              torch.bool]
    tensors = {str(d): (torch.arange(6) % 2).to(d).reshape(2, 3) for d in dtypes}
    checkpoint.save(tmp_path, 1, {"tensors": tensors, "values": values}, {})
    ckpt = checkpoint.latest(tmp_path)
    back = {"tensors": {k: torch.empty_like(v) for k, v in tensors.items()}, "values": dict.fromkeys(values)}
    checkpoint.load(ckpt, back)
    assert back["values"] == values
    for name, tensor in tensors.items():
        assert back["tensors"][name].dtype == tensor.dtype and torch.equal(back["tensors"][name], tensor), name
