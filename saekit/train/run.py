"""`saekit train`: a recipe → a run directory with trained dictionaries.

Run directory layout:
    recipe.yaml      the resolved recipe (flags applied)
    run.json         status and summary
    history.jsonl    training curves
    checkpoints/     newest checkpoints (atomic)
    saes/NAME/       cfg.json + sae_weights.safetensors + sparsity.safetensors (SAELens format)
    wandb/           offline wandb run
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from saekit.activations import open_stream
from saekit.config import save_yaml, to_dict
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import IDENTITY, Recipe
from saekit.train.checkpoint import RunLock, describe_mismatch
from saekit.train.snmf_run import SNMFRun
from saekit.train.trainer import Trainer


def check_output_dir(recipe: Recipe, out: Path, resume: bool) -> None:
    """Refuse to overwrite another run; refuse to silently restart an existing one."""
    saved = out / "recipe.yaml"
    if resume:
        if not saved.is_file():
            raise SaekitError(f"Nothing to resume in {out} (no recipe.yaml); run without --resume.")
        # Checked here, before run.json is rewritten; `train` (steps, LR, ...) may change.
        before = yaml.safe_load(saved.read_text()) or {}
        diff = describe_mismatch({k: before.get(k) for k in IDENTITY}, recipe.identity())
        if diff:
            raise SaekitError(
                f"{out} was written by a different recipe: {'; '.join(diff[:6])}. Resume "
                "with the recipe that wrote it, or choose another train.output_dir."
            )
        return
    if saved.is_file():
        same = yaml.safe_load(saved.read_text()) == to_dict(recipe)
        what = "this run already" if same else "a different run"
        raise SaekitError(
            f"{out} holds {what}; pass --resume to continue it, or set "
            "train.output_dir to a new directory. Nothing was overwritten."
        )
    if out.exists() and any(p.name != RunLock.NAME for p in out.iterdir()):
        raise SaekitError(
            f"{out} is not empty and holds no saekit run; choose another "
            "train.output_dir. Nothing was overwritten."
        )


def provenance(recipe: Recipe) -> dict[str, Any]:
    """Fields SAELens also records in its cfg.json metadata."""
    return {
        "model_name": recipe.model.name,
        "context_size": recipe.data.context_size,
        "prepend_bos": recipe.data.prepend_bos,
        "dataset_path": recipe.data.source,
    }


def train_recipe(
    recipe: Recipe, resume: bool = False, model: HookedModel | None = None
) -> dict[str, Any]:
    out = Path(recipe.train.output_dir)
    check_output_dir(recipe, out, resume)  # before the slow part: the model load
    if model is None and recipe.stream.cache_dir is None:
        model = build_hooked_model(recipe.model)
    stream = open_stream(model, recipe.data, recipe.stream, "train")
    # Built before the lock: bad settings (k ≥ d_sae, unstreamed hook) leave no trace.
    trainer: Trainer | SNMFRun
    if recipe.saes and all(s.method == "snmf" for s in recipe.saes):  # closed-form fits
        trainer = SNMFRun(recipe.saes, recipe.train, stream, provenance(recipe))
    else:
        trainer = Trainer(recipe.saes, recipe.train, stream, recipe.identity(), provenance(recipe))
    with RunLock(out):
        check_output_dir(recipe, out, resume)  # again: another run may have started meanwhile
        if not resume:
            save_yaml(recipe, out / "recipe.yaml")
        write_run_json(out, {"status": "training", "recipe": to_dict(recipe)})
        summary = trainer.train(resume=resume)
        summary["run_dir"] = str(out)
        write_run_json(out, {"status": "done", "recipe": to_dict(recipe), **summary})
    return summary


def write_run_json(out: Path, data: dict[str, Any]) -> None:
    path = out / "run.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)
