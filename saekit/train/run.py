"""`saekit train`: a recipe → a run directory with trained dictionaries.

Run directory layout:
    recipe.yaml      the resolved recipe (flags applied)
    run.json         status and summary
    history.jsonl    training curves
    checkpoints/     newest checkpoints (atomic)
    saes/NAME/       cfg.json + sae_weights.safetensors + sparsity.safetensors (SAELens format)
    wandb/           offline wandb run

Under torchrun every rank calls `train_recipe`; rank 0 alone checks and locks the directory,
writes recipe.yaml, run.json, history and checkpoints (see distributed.py for the split).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from saekit.activations import StreamConfig, open_stream
from saekit.config import save_yaml, to_dict
from saekit.dictionaries import SAEConfig
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import IDENTITY, Recipe
from saekit.train.checkpoint import RunLock, describe_mismatch
from saekit.train.distributed import Distributed, check_world, local_device, shard_stream
from saekit.train.snmf_run import SNMFRun
from saekit.train.trainer import Trainer


def check_output_dir(recipe: Recipe, out: Path, resume: bool) -> None:
    """Refuse to overwrite another run; refuse to silently restart an existing one."""
    saved = out / "recipe.yaml"
    if resume:
        if not saved.is_file():
            raise SaekitError(f"Nothing to resume in {out} (no recipe.yaml); run without --resume.")
        settle_status(out)
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
        status = settle_status(out)
        raise SaekitError(
            f"{out} holds {what}{f' ({status})' if status else ''}; pass --resume to continue "
            "it, or set train.output_dir to a new directory. Nothing was overwritten."
        )
    if out.exists() and any(not p.name.startswith(RunLock.NAME) for p in out.iterdir()):
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
    """Train a recipe in this process, or as one rank of a torchrun launch (see distributed.py)."""
    dist = Distributed.from_env(recipe.train.parallel, recipe.train.device)
    finished = False
    try:
        summary = _train(recipe, resume, model, dist)
        finished = True
        return summary
    finally:
        dist.close(finished)


def _train(
    recipe: Recipe, resume: bool, model: HookedModel | None, dist: Distributed
) -> dict[str, Any]:
    out = Path(recipe.train.output_dir)
    snmf = bool(recipe.saes) and all(s.method == "snmf" for s in recipe.saes)
    if snmf and dist.active:
        raise SaekitError("snmf fits run in one process; launch `saekit train` without torchrun.")
    check_world(dist.mode, dist.world, recipe.stream.batch_size, len(recipe.saes))
    dist.on_main(lambda: check_output_dir(recipe, out, resume))  # before the model load
    saes, stream_cfg = rank_split(recipe, dist)
    if model is None and stream_cfg.cache_dir is None:
        device = local_device(recipe.model.device)
        model = dist.everywhere(lambda: build_hooked_model(replace(recipe.model, device=device)))
    stream = dist.everywhere(
        lambda: open_stream(model, recipe.data, stream_cfg, "train", verify=recipe.cache.verify)
    )
    shard_stream(stream, dist)
    train_cfg = replace(recipe.train, device=local_device(recipe.train.device))

    # Built before the lock: bad settings (k ≥ d_sae, unstreamed hook) leave no trace.
    def build() -> Trainer | SNMFRun:
        if snmf:  # closed-form fits
            return SNMFRun(recipe.saes, recipe.train, stream, provenance(recipe))
        return Trainer(saes, train_cfg, stream, recipe.identity(), provenance(recipe), dist)

    trainer = dist.everywhere(build)
    lock = RunLock(out)
    with dist.main_only(lock.__enter__, lambda: lock.__exit__(None, None, None)):
        # Again: another run may have started meanwhile.
        dist.on_main(lambda: check_output_dir(recipe, out, resume))
        if dist.is_main:
            if not resume:
                save_yaml(recipe, out / "recipe.yaml")
            write_run_json(out, {"status": "training", "recipe": to_dict(recipe)})
        try:
            summary = trainer.train(resume=resume)
        except BaseException as exc:
            if dist.is_main:
                write_run_json(out, ended(exc, getattr(trainer, "step", None), recipe))
            raise
        summary["run_dir"] = str(out)
        if dist.is_main:
            write_run_json(out, {"status": "done", "recipe": to_dict(recipe), **summary})
    return summary


def rank_split(recipe: Recipe, dist: Distributed) -> tuple[tuple[SAEConfig, ...], StreamConfig]:
    """This rank's dictionaries (hooks resolved) and stream: 1/N of the batch in data mode,
    only the hooks of its own dictionaries in hooks mode."""
    cfg = recipe.stream
    saes = tuple(replace(s, hook=s.hook or cfg.hooks[0]) for s in recipe.saes)
    for i, sae in enumerate(saes):
        if sae.hook not in cfg.hooks:
            raise SaekitError(
                f"saes[{i}].hook {sae.hook!r} is not streamed; add it to "
                f"stream.hooks (now {list(cfg.hooks)})."
            )
    if not dist.active:
        return saes, cfg
    if dist.mode == "data":
        return saes, replace(cfg, batch_size=cfg.batch_size // dist.world)
    mine = {s.hook for i, s in enumerate(saes) if dist.owns(i)}
    return saes, replace(cfg, hooks=tuple(h for h in cfg.hooks if h in mine))


def ended(exc: BaseException, step: int | None, recipe: Recipe) -> dict[str, Any]:
    """run.json of a run stopped by `exc`: interrupted (Ctrl-C) or failed, with the reason."""
    if isinstance(exc, KeyboardInterrupt):
        status, reason = "interrupted", "stopped by Ctrl-C; continue it with --resume"
    else:
        status = "failed"
        reason = str(exc) if isinstance(exc, SaekitError) else f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split())  # one line, as the CLI prints it
    return {"status": status, "error": reason, "step": step, "recipe": to_dict(recipe)}


def settle_status(out: Path) -> str | None:
    """run.json's status. A run it says is training while no live process holds the run's
    lock was killed (kill -9, a crash, a lost machine): record it as interrupted."""
    try:
        data = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if data.get("status") == "training" and RunLock(out).holder() is None:
        data["status"] = "interrupted"
        data["error"] = "the process died without finishing; continue it with --resume"
        write_run_json(out, data)
    return str(data.get("status"))


def write_run_json(out: Path, data: dict[str, Any]) -> None:
    path = out / "run.json"
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1))
    partial.replace(path)
