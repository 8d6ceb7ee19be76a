"""Steer generation with one direction or feature: the functions behind `saekit steer`.

edit = feature_edit(sae, feature=12, strength=8.0)         # add 8 · d_12 / ‖d_12‖
edit = feature_edit(sae, feature=12, clamp=5.0)            # set z_12 = 5, keep the error
edits = feature_edits(sae, 12, strength=8.0)               # {hook: edit}; transcoders too
text = steer_generate(model, "I think that", {hook: edit})  # hooks removed afterwards
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saekit.dictionaries import load_dictionary
from saekit.dictionaries.base import Dictionary
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.recipe import load_run
from saekit.steering.directions import dictionary_direction
from saekit.steering.generate import Edits, encode_prompts, generate
from saekit.steering.interventions import (
    AddDirection,
    ClampFeature,
    PositionalEdit,
    RecordInput,
)


def resolve_dictionary(
    run_dir: str | Path, dictionary: str | None = None, hook: str | None = None
) -> tuple[Any, str, Dictionary, str]:
    """(recipe, name, dictionary, hook) of the run's dictionary called `dictionary`
    (optional when the run has exactly one)."""
    recipe, targets = load_run(run_dir, hook)
    names = [name for name, _, _ in targets]
    if dictionary is None and len(targets) > 1:
        raise SaekitError(
            f"{run_dir} holds {len(targets)} dictionaries; pick one with --dictionary "
            f"(one of: {', '.join(names)})."
        )
    chosen = [t for t in targets if dictionary in (None, t[0])]
    if not chosen:
        raise SaekitError(
            f"No dictionary {dictionary!r} in {run_dir}; choose from: {', '.join(names)}."
        )
    name, sae_dir, sae_hook = chosen[0]
    return recipe, name, load_dictionary(sae_dir), sae_hook


def feature_edit(
    sae: Dictionary,
    feature: int,
    strength: float | None = None,
    clamp: float | None = None,
    from_pos: int = 0,
) -> PositionalEdit:
    """Add `strength` × the feature's unit direction, or clamp its code to `clamp`."""
    if (strength is None) == (clamp is None):
        raise SaekitError("Give exactly one of a steering strength (--strength) or --clamp VALUE.")
    if strength is not None:
        if not math.isfinite(strength):
            raise SaekitError(f"Steering strength must be a finite number, got {strength}.")
        return AddDirection(dictionary_direction(sae, feature), strength, from_pos)
    assert clamp is not None
    return ClampFeature(sae, feature, clamp, from_pos)


def feature_edits(
    sae: Dictionary,
    feature: int,
    strength: float | None = None,
    clamp: float | None = None,
    from_pos: int = 0,
    hook: str | None = None,
) -> dict[str, PositionalEdit]:
    """{hook: edit} steering feature `feature` where the dictionary writes: at `hook` (default:
    the one it was trained on) for an SAE; at a transcoder's output hook, its clamp reading
    the input hook (`hook`, default its own) in the same forward."""
    read = hook or sae.cfg.hook
    if not read:
        raise SaekitError("This dictionary records no hook; pass hook=... to steer with it.")
    if not sae.is_transcoder:
        return {read: feature_edit(sae, feature, strength, clamp, from_pos)}
    if clamp is None:
        return {sae.write_hook: feature_edit(sae, feature, strength, None, from_pos)}
    if strength is not None:
        feature_edit(sae, feature, strength, clamp)  # its error for giving both
    source = RecordInput()
    return {read: source, sae.write_hook: ClampFeature(sae, feature, clamp, from_pos, source)}


def check_edits(model: HookedModel, edits: Edits) -> None:
    """Fail before generating if a hook is unknown or a vector has the wrong width."""
    for hook, edit in edits.items():
        width = model.width(hook)
        if isinstance(edit, AddDirection):
            need = edit.vector_D.shape[0]
        elif isinstance(edit, ClampFeature):
            need = edit.sae.d_out  # where it adds its direction (= d_in but for transcoders)
        else:
            continue
        if need != width:
            raise SaekitError(
                f"The steering direction has width {need} but {hook} has width {width}; steer "
                "at the hook the direction was learned at (--hook)."
            )


def steer_generate(
    model: HookedModel,
    prompt: str,
    edits: Edits | None,
    n_new: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """The continuation of `prompt` with the edits active (none: the unsteered model)."""
    if edits:
        check_edits(model, edits)
    (ids,) = encode_prompts(model, [prompt])
    (cont,) = generate(model, [ids], n_new, edits, temperature, seed)
    return str(model.tokenizer.decode(cont))


def steer(
    model: HookedModel,
    sae: Dictionary,
    prompt: str,
    feature: int,
    strength: float | None = None,
    clamp: float | None = None,
    hook: str | None = None,
    n_new: int = 32,
) -> str:
    """`saekit.steer`: the continuation of `prompt` with feature `feature` of `sae` added at
    `strength` × its unit direction (or its code clamped to `clamp`), at `hook` (default: the
    hook the dictionary was trained on; a transcoder's feature at its output hook, see
    `feature_edits`). Greedy decoding."""
    edits = feature_edits(sae.to(model.device), feature, strength, clamp, hook=hook)
    return steer_generate(model, prompt, edits, n_new=n_new)
