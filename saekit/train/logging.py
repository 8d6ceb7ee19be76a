"""Where training metrics go: memory (the history a fit returns), history.jsonl (read by
`saekit eval` for its curves) and wandb, the last two only with a run directory."""

from __future__ import annotations

import json
import os
from typing import Any

from saekit.rundir import RunDir
from saekit.train.config import TrainConfig


class RunLogger:
    """Keeps every log record; with a run directory also appends one JSON line per record
    and mirrors it to wandb (offline by default)."""

    def __init__(
        self, out: RunDir | None, cfg: TrainConfig, run_config: dict[str, Any], resume: bool
    ) -> None:
        self.records: list[dict[str, float]] = []
        self.path = out.history if out is not None else None
        self.run = None
        if out is None:
            return
        out.path.mkdir(parents=True, exist_ok=True)
        if not resume:
            out.history.unlink(missing_ok=True)
        if cfg.wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=cfg.wandb_project,
                dir=str(out.path),
                mode=cfg.wandb_mode,
                config=run_config,
                name=out.path.name,
                reinit="create_new",
            )

    def log(self, step: int, record: dict[str, float]) -> None:
        self.records.append({"step": step, **record})
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(json.dumps({"step": step, **record}) + "\n")
        if self.run is not None:
            self.run.log(record, step=step)

    def truncate(self, step: int) -> None:
        """Drop lines past `step` (a resumed run re-logs them); keep the earlier ones."""
        if self.path is None or not self.path.exists():
            return
        lines = [json.loads(ln) for ln in self.path.read_text().splitlines()]
        self.records = [r for r in lines if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update({"tokens": summary["tokens"], "steps": summary["steps"]})
            self.run.finish()
