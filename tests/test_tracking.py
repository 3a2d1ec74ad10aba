"""Tests for support/tracking.py: with --wandb=true every numeric field of every log.jsonl record reaches wandb at
its step (a stand-in wandb module records the calls: the real one is not a dependency); off by default, wandb is
never imported; a missing wandb is one line, exit 2."""

import json
import sys
import types

from test_faults import args, run_main
from test_train import data_dir  # noqa: F401 (a fixture)

import config
import train


class FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished += 1


def test_every_record_goes_to_wandb_at_its_step(tmp_path, data_dir, capsys, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    code, _ = run_main(capsys, args(out, data_dir, "--wandb=true", "--wandb_project=p", steps=4))
    assert code == 0 and fake.finished == 1
    (init,) = fake.inits
    assert init["project"] == "p" and init["name"] == "run" and init["dir"] == str(out)
    assert init["config"]["max_steps"] == 4
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][1:]  # after the config
    assert len(fake.logged) == len(records) > 4
    for record, (step, values) in zip(records, fake.logged):
        assert step == record["step"]
        assert values["train/loss_nitp" if record["kind"] == "train" else "eval/val_loss"] == record.get(
            "loss_nitp", record.get("val_loss"))


def test_off_by_default_and_never_imported(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    assert config.TrainConfig().wandb is False
    code, _ = run_main(capsys, args(tmp_path / "run", data_dir, steps=2))
    assert code == 0 and "wandb" not in sys.modules


def test_missing_wandb_is_one_line(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    code, err = run_main(capsys, args(tmp_path / "run", data_dir, "--wandb=true", steps=2))
    assert code == 2 and "pip install wandb" in err and len(err.strip().splitlines()) == 1
    assert train.TrainConfig is config.TrainConfig
