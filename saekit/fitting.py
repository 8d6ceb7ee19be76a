"""`saekit.fit` and `saekit train`: configs (or a recipe) + activations → trained dictionaries.

    result = saekit.fit(saekit.SAEConfig(d_sae=4096, k=32), acts_ND)          # tensors, no model
    result = saekit.fit("recipes/smollm2-quickstart.yaml")                    # a whole recipe
    result.dictionary, result.history, result.run_dir

A recipe brings its own model and text stream and always writes its run directory
(`train.output_dir`: recipe.yaml, run.json, history, checkpoints, saes/; see rundir.py), with
the guarantees of `saekit train`: an existing run is never overwritten, `resume=True`
continues from the newest checkpoint, one lock per directory. Configs + a stream (or
tensors) write nothing unless `run_dir` is given. Under torchrun every rank calls
`train_recipe`; rank 0 alone checks and locks the directory and writes recipe.yaml, run.json,
history and checkpoints (see train/distributed.py for the split).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor

from saekit.activations import BaseStream, StreamConfig, TensorStream, open_stream
from saekit.config import from_dict, save_yaml, to_dict
from saekit.dictionaries import Dictionary, FittedDictionary, SAEConfig, dictionary_class
from saekit.errors import SaekitError, Terminated
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import Recipe
from saekit.rundir import RunDir, write_json
from saekit.train.checkpoint import RunLock, describe_mismatch
from saekit.train.config import TrainConfig
from saekit.train.distributed import Distributed, check_world, local_device, shard_stream
from saekit.train.fit_run import FitRun
from saekit.train.trainer import Trainer


@dataclass
class FitResult:
    """What `fit` returns."""

    dictionaries: dict[str, Dictionary]
    """Each trained dictionary by run name (`00-topk-HOOK`), on the CPU, taking raw
    activations (a stream's normalization is folded into the weights)."""
    history: list[dict[str, float]]
    """Every log record ({"step": n, "NAME/fvu": ..., "NAME/l0": ..., ...}), in order."""
    run_dir: Path | None
    """Where the run was written (None: nothing was written)."""
    summary: dict[str, Any]
    """Steps, tokens and per-dictionary facts, as run.json stores them."""

    @property
    def dictionary(self) -> Dictionary:
        """The trained dictionary, when the run trained exactly one."""
        if len(self.dictionaries) != 1:
            raise SaekitError(
                f"This run trained {len(self.dictionaries)} dictionaries; pick one from "
                f"result.dictionaries ({', '.join(self.dictionaries)})."
            )
        return next(iter(self.dictionaries.values()))


def fit(
    saes: Recipe | str | Path | SAEConfig | Sequence[SAEConfig],
    acts: BaseStream | Tensor | Mapping[str, Tensor] | None = None,
    train: TrainConfig | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    model: HookedModel | None = None,
) -> FitResult:
    """Train (or, for SNMF, fit) dictionaries and return them.

    saes     a Recipe or a YAML recipe path (model, text, stream and run directory from it),
             or one or more SAEConfigs trained on `acts`
    acts     a stream, or in-memory activations: a [tokens, d_in] tensor, or {hook: tensor}
             for several hooks (then `SAEConfig.hook` picks one); batches of 4096 rows,
             shuffled each epoch (pass a `TensorStream` to choose)
    train    optimization settings (default TrainConfig(): 2M tokens, each method's lr,
             clip, warmup and decay)
    run_dir  configs only: write a run directory there (saes/, history.jsonl, run.json)
    resume   recipes only: continue the run in train.output_dir from its newest checkpoint
    model    recipes only: an already loaded model instead of the recipe's
    """
    if isinstance(saes, Recipe | str | Path):
        if acts is not None or train is not None or run_dir is not None:
            raise SaekitError(
                "A recipe brings its own stream, train section and output directory; pass "
                "configs instead of a recipe to train on your own activations."
            )
        recipe = saes if isinstance(saes, Recipe) else Recipe.load(saes)
        summary, runner = run_recipe(recipe, resume=resume, model=model)
        return _result(runner, summary, Path(recipe.train.output_dir))
    if resume or model is not None:
        raise SaekitError("resume and model apply to recipes; fit(configs, acts) starts fresh.")
    cfgs = (saes,) if isinstance(saes, SAEConfig) else tuple(saes)
    stream = acts if isinstance(acts, BaseStream) else _tensor_stream(acts, cfgs)
    train = train or TrainConfig()
    out = RunDir(run_dir) if run_dir is not None else None
    if out is not None:
        check_output_dir(out, None, resume=False)
    runner = build_runner(cfgs, train, stream, {}, {}, Distributed(), out)
    if out is None:
        summary = runner.train()
    else:
        with RunLock(out.path):
            check_output_dir(out, None, resume=False)  # again: another run may have started
            write_json(out.run_json, {"status": "training"})
            try:
                summary = runner.train()
            except BaseException as exc:
                write_json(out.run_json, ended(exc, getattr(runner, "step", None), None))
                raise
            summary["run_dir"] = str(out.path)
            write_json(out.run_json, {"status": "done", **summary})
    return _result(runner, summary, out.path if out else None)


def _tensor_stream(
    acts: Tensor | Mapping[str, Tensor] | None, cfgs: tuple[SAEConfig, ...]
) -> TensorStream:
    """A stream over in-memory activations; one tensor is named after the configs' hook."""
    if acts is None:
        raise SaekitError(
            "fit(configs) needs activations: a [tokens, d_in] tensor, {hook: tensor}, or a "
            "stream. To train on a model's text instead, pass a recipe."
        )
    hooks = {h for c in cfgs for h in (c.hook, c.output_hook) if h}
    if isinstance(acts, Tensor) and len(hooks) > 1:
        raise SaekitError(
            f"One tensor cannot feed the hooks {sorted(hooks)}; pass {{hook: tensor}} instead "
            "(a transcoder reads its hook and predicts its output_hook: both, same rows)."
        )
    return TensorStream(acts, hook=hooks.pop() if hooks else "x")


def _result(runner: Trainer | FitRun, summary: dict[str, Any], out: Path | None) -> FitResult:
    return FitResult(dict(runner.dictionaries), list(runner.history), out, summary)


def build_runner(
    saes: tuple[SAEConfig, ...],
    train: TrainConfig,
    stream: BaseStream,
    run_config: dict[str, Any],
    provenance: dict[str, Any],
    dist: Distributed,
    run_dir: RunDir | None,
) -> Trainer | FitRun:
    """A Trainer, or a FitRun when every dictionary is fitted in closed form (SNMF)."""
    fitted = [issubclass(dictionary_class(s.method), FittedDictionary) for s in saes]
    if saes and all(fitted):
        if dist.active:
            raise SaekitError(
                "Fitted dictionaries (snmf) run in one process; launch `saekit train` "
                "without torchrun."
            )
        return FitRun(saes, train, stream, provenance, run_dir)
    return Trainer(saes, train, stream, run_config, provenance, dist, run_dir)


def check_output_dir(out: RunDir, recipe: Recipe | None, resume: bool) -> None:
    """Refuse to overwrite another run; refuse to silently restart an existing one."""
    if resume:
        settle_status(out)
        if not out.is_run():
            raise SaekitError(
                f"Nothing to resume in {out.path} (no recipe.yaml); run without --resume."
            )
        if recipe is not None:
            # Checked here, before run.json is rewritten; `train` (steps, LR, ...) may change.
            before = from_dict(Recipe, yaml.safe_load(out.recipe.read_text()) or {}).identity()
            diff = describe_mismatch(before, recipe.identity())
            if diff:
                raise SaekitError(
                    f"{out.path} was written by a different recipe: {'; '.join(diff[:6])}. "
                    "Resume with the recipe that wrote it, or choose another train.output_dir."
                )
        return
    if recipe is None and (out.is_run() or out.run_json.is_file()):
        raise SaekitError(
            f"{out.path} holds a run already; choose another run_dir. Nothing was overwritten."
        )
    status = settle_status(out)
    if out.is_run():
        same = yaml.safe_load(out.recipe.read_text()) == to_dict(recipe)
        what = "this run already" if same else "a different run"
        raise SaekitError(
            f"{out.path} holds {what}{f' ({status})' if status else ''}; pass --resume to "
            "continue it, or set train.output_dir to a new directory. Nothing was overwritten."
        )
    if out.path.exists() and any(not p.name.startswith(RunLock.NAME) for p in out.path.iterdir()):
        raise SaekitError(
            f"{out.path} is not empty and holds no saekit run; choose another "
            "directory. Nothing was overwritten."
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
    """`saekit train`: train a recipe in this process, or as one rank of a torchrun launch;
    the run's summary (as run.json stores it)."""
    return run_recipe(recipe, resume, model)[0]


def run_recipe(
    recipe: Recipe, resume: bool = False, model: HookedModel | None = None
) -> tuple[dict[str, Any], Trainer | FitRun]:
    """`train_recipe`, also returning the runner that holds the dictionaries and history."""
    dist = Distributed.from_env(recipe.train.parallel, recipe.train.device)
    finished = False
    try:
        out = _train(recipe, resume, model, dist)
        finished = True
        return out
    finally:
        dist.close(finished)


def _train(
    recipe: Recipe, resume: bool, model: HookedModel | None, dist: Distributed
) -> tuple[dict[str, Any], Trainer | FitRun]:
    out = RunDir(recipe.train.output_dir)
    check_world(dist.mode, dist.world, recipe.stream.batch_size, len(recipe.saes))
    dist.on_main(lambda: check_output_dir(out, recipe, resume))  # before the model load
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
    runner = dist.everywhere(
        lambda: build_runner(
            saes, train_cfg, stream, recipe.identity(), provenance(recipe), dist, out
        )
    )
    lock = RunLock(out.path)
    with dist.main_only(lock.__enter__, lambda: lock.__exit__(None, None, None)):
        # Again: another run may have started meanwhile.
        dist.on_main(lambda: check_output_dir(out, recipe, resume))
        if dist.is_main:
            if not resume:
                save_yaml(recipe, out.recipe)
            write_json(out.run_json, {"status": "training", "recipe": to_dict(recipe)})
        try:
            summary = runner.train(resume=resume)
        except BaseException as exc:
            if dist.is_main:
                write_json(out.run_json, ended(exc, getattr(runner, "step", None), recipe))
            raise
        summary["run_dir"] = str(out.path)
        if dist.is_main:
            write_json(out.run_json, {"status": "done", "recipe": to_dict(recipe), **summary})
    return summary, runner


def ended(exc: BaseException, step: int | None, recipe: Recipe | None) -> dict[str, Any]:
    """run.json of a run stopped by `exc`: interrupted (Ctrl-C) or failed, with the reason."""
    if isinstance(exc, KeyboardInterrupt):
        how = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
        status, reason = "interrupted", f"stopped by {how}; continue it with --resume"
    else:
        status = "failed"
        reason = str(exc) if isinstance(exc, SaekitError) else f"{type(exc).__name__}: {exc}"
    reason = " ".join(reason.split())  # one line, as the CLI prints it
    out = {"status": status, "error": reason, "step": step}
    return out | ({"recipe": to_dict(recipe)} if recipe is not None else {})


def settle_status(out: RunDir) -> str | None:
    """run.json's status. A run it says is training while no live process holds the run's
    lock was killed (kill -9, a crash, a lost machine): record it as interrupted."""
    try:
        data = json.loads(out.run_json.read_text())
    except (OSError, ValueError):
        return None
    if data.get("status") == "training" and RunLock(out.path).holder() is None:
        data["status"] = "interrupted"
        data["error"] = "the process died without finishing; continue it with --resume"
        write_json(out.run_json, data)
    return str(data.get("status"))


def rank_split(recipe: Recipe, dist: Distributed) -> tuple[tuple[SAEConfig, ...], StreamConfig]:
    """This rank's dictionaries (hooks resolved) and stream: 1/N of the batch in data mode,
    only the hooks of its own dictionaries in hooks mode."""
    cfg = recipe.stream
    saes = tuple(replace(s, hook=s.hook or cfg.hooks[0]) for s in recipe.saes)
    for i, sae in enumerate(saes):
        for field, name in (("hook", sae.hook), ("output_hook", sae.output_hook)):
            if name and name not in cfg.hooks:
                raise SaekitError(
                    f"saes[{i}].{field} {name!r} is not streamed; add it to "
                    f"stream.hooks (now {list(cfg.hooks)})."
                )
    if not dist.active:
        return saes, cfg
    if dist.mode == "data":
        return saes, replace(cfg, batch_size=cfg.batch_size // dist.world)
    mine = {h for i, s in enumerate(saes) if dist.owns(i) for h in (s.hook, s.output_hook) if h}
    return saes, replace(cfg, hooks=tuple(h for h in cfg.hooks if h in mine))
