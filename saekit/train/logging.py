"""Where training metrics go: history.jsonl (read by `saekit eval` for its curves) and wandb."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from saekit.train.config import TrainConfig


class RunLogger:
    """Appends one JSON line per log step and mirrors it to wandb (offline by default)."""

    def __init__(
        self, out: Path, cfg: TrainConfig, run_config: dict[str, Any], resume: bool
    ) -> None:
        self.path = out / "history.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            self.path.unlink(missing_ok=True)
        self.run = None
        if cfg.wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=cfg.wandb_project,
                dir=str(out),
                mode=cfg.wandb_mode,
                config=run_config,
                name=out.name,
                reinit="create_new",
            )

    def log(self, step: int, record: dict[str, float]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **record}) + "\n")
        if self.run is not None:
            self.run.log(record, step=step)

    def truncate(self, step: int) -> None:
        """Drop lines past `step` (a resumed run re-logs them)."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update({"tokens": summary["tokens"], "steps": summary["steps"]})
            self.run.finish()
