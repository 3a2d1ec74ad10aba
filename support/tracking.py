"""tracking.py: a run's log: log.jsonl, and optionally the same records in Weights & Biases.

train.py writes every record (its config line first, then train, eval and skipped lines) through RunLog.write:
appended to OUT_DIR/log.jsonl (support/files.py), and, with --wandb=true, logged to a wandb run at the record's
step (numbers only). wandb is imported only when switched on; it is not a dependency of the repo
(`pip install wandb`). WANDB_MODE=offline works with no network: the run is written under OUT_DIR/wandb/ and
`wandb sync` uploads it later. Only global rank 0 writes. Nothing runs at import.
"""

import dataclasses
import os

from support import files


class RunLog:
    """log.jsonl of one run, and its wandb twin when cfg (a config.TrainConfig) has wandb on."""

    def __init__(self, path, cfg=None):
        self.path, self.wandb = path, None
        if cfg is None or not cfg.wandb:
            return
        try:
            import wandb
        except ImportError:
            raise ValueError("--wandb=true needs the wandb package: pip install wandb (or drop --wandb)") from None
        out_dir = os.path.dirname(os.path.abspath(path))
        self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name or os.path.basename(out_dir),
                                dir=out_dir, config=dataclasses.asdict(cfg))

    def write(self, *records) -> None:
        files.write_jsonl(self.path, *records)
        for record in records if self.wandb is not None else ():
            numbers = {key: value for key, value in record.items()
                       if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
            if numbers:
                self.wandb.log({f"{record['kind']}/{key}": value for key, value in numbers.items()},
                               step=record.get("step", 0))

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
