"""The run directory: this module alone knows its layout; every command asks it for paths.

    recipe.yaml        the resolved recipe (flags applied)       saekit train
    run.json           status and summary                        saekit train
    history.jsonl      training curves                           saekit train
    checkpoints/       newest checkpoints (atomic)               saekit train, --resume
    saes/NAME/         each dictionary, SAELens format           saekit train
    wandb/             offline wandb run                         saekit train
    report.json, *.png every measured number, plots              saekit eval
    interp.json        interpretability scores per dictionary    saekit eval, saekit dashboard
    interp/NAME/       per-feature statistics (table.json, features/I.json)
    steering.json      steering scores (+ steering-*.png)        saekit eval --steering, compare
    probing.json       sparse probing per task, controls         saekit eval --probing
    absorption.json    first-letter absorption per letter        saekit eval --absorption
    selection/         ranking, subset, selection.json           saekit select
    dashboard/         the static feature site                   saekit dashboard
    attribution/       attribution.json, index.html, validation.json   saekit attribute
    run.lock           pid of the run writing here (while it runs)

A directory holding one saved dictionary (cfg.json) is also accepted wherever a run is read:
`targets` then lists that dictionary alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from saekit.dictionaries.saelens_format import saved_hook
from saekit.dictionaries.save import CFG_FILE
from saekit.errors import SaekitError

LOCK_FILE = "run.lock"


class Target(NamedTuple):
    """One dictionary of a run: its name, save directory and the hook it reads."""

    name: str
    path: Path
    hook: str


class RunDir:
    """Paths of one run directory (nothing is created until something is written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---- written by training -----------------------------------------------------------------
    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def history(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def saes(self) -> Path:
        return self.path / "saes"

    def sae_dir(self, name: str) -> Path:
        return self.saes / name

    @property
    def wandb(self) -> Path:
        return self.path / "wandb"

    @property
    def lock_file(self) -> Path:
        """Holds the pid of the run writing here (train/checkpoint.py's RunLock)."""
        return self.path / LOCK_FILE

    # ---- written by evaluation and the uses of a dictionary ----------------------------------
    @property
    def report(self) -> Path:
        return self.path / "report.json"

    def plot(self, name: str) -> Path:
        """A report PNG: `training-curves`, `NAME-density`."""
        return self.path / f"{name}.png"

    @property
    def interp(self) -> Path:
        return self.path / "interp.json"

    def interp_dir(self, name: str) -> Path:
        return self.path / "interp" / name

    @property
    def steering(self) -> Path:
        return self.path / "steering.json"

    @property
    def probing(self) -> Path:
        return self.path / "probing.json"

    @property
    def absorption(self) -> Path:
        return self.path / "absorption.json"

    @property
    def steering_study_plot(self) -> Path:
        return self.path / "steering-study.png"

    def steering_plot(self, hook: str) -> Path:
        return self.path / f"steering-{hook.replace(':', '_').replace('/', '_')}.png"

    @property
    def selection(self) -> Path:
        return self.path / "selection"

    @property
    def selection_json(self) -> Path:
        return self.selection / "selection.json"

    @property
    def dashboard(self) -> Path:
        return self.path / "dashboard"

    @property
    def attribution(self) -> Path:
        return self.path / "attribution"

    # ---- reading -----------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether `saekit train` wrote here (a recipe.yaml)."""
        return self.recipe.is_file()

    def is_dictionary(self) -> bool:
        """Whether this directory is one saved dictionary (cfg.json) rather than a run."""
        return (self.path / CFG_FILE).is_file()

    def sae_dirs(self) -> list[Path]:
        """Every saved dictionary under saes/, by name."""
        return sorted(p for p in self.saes.glob("*") if (p / CFG_FILE).is_file())

    def targets(self, hook: str | None, default_hook: str | None) -> list[Target]:
        """The dictionaries to read: a run's saes/ (each at `hook`, else the hook it was trained
        on, else `default_hook`), or the one dictionary this directory holds."""
        if self.is_run():
            dirs = self.sae_dirs()
            if not dirs:
                raise SaekitError(
                    f"{self.path} has no trained dictionaries under saes/; run "
                    "`saekit train` first (or resume it)."
                )
            return [Target(d.name, d, hook or saved_hook(d) or default_hook or "") for d in dirs]
        if self.is_dictionary():
            name = hook or saved_hook(self.path)
            if not name:
                raise SaekitError(f"{self.path}/{CFG_FILE} names no hook; pass --hook HOOK_NAME.")
            return [Target(self.path.name, self.path, name)]
        raise SaekitError(
            f"{self.path} is neither a run directory (recipe.yaml) nor an SAE directory "
            f"({CFG_FILE})."
        )

    def read_json(self, path: Path) -> dict[str, Any] | None:
        """A JSON file of the run, or None when it has not been written."""
        return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, data: Any, indent: int | None = 1) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    separators = (",", ":") if indent is None else None
    partial.write_text(json.dumps(data, indent=indent, separators=separators))
    partial.replace(path)
    return path
