"""saekit: sparse dictionaries on language-model activations — train, evaluate, steer, select.

    import saekit
    result = saekit.fit(saekit.SAEConfig(d_sae=4096, k=32), acts_ND)     # your own tensors
    saekit.evaluate(result.dictionary, held_out_ND)["fvu"]
    saekit.steer(model, result.dictionary, "I think that", feature=3, strength=8.0)

Names load on first use, so `import saekit` (and the `saekit` command's --help) stays fast;
the command line reads the same configs from YAML recipes (`saekit train RECIPE`).
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = _metadata.version("saekit")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    # configs: a recipe and its sections, each method's options
    "Recipe": "saekit.recipe",
    "ModelConfig": "saekit.models.loading",
    "DataConfig": "saekit.data.text",
    "StreamConfig": "saekit.activations.stream",
    "CacheConfig": "saekit.activations.cache",
    "SAEConfig": "saekit.dictionaries.config",
    "TrainConfig": "saekit.train.config",
    "ReLUConfig": "saekit.dictionaries.relu",
    "JumpReLUConfig": "saekit.dictionaries.jumprelu",
    "MatryoshkaConfig": "saekit.dictionaries.matryoshka",
    "MPConfig": "saekit.dictionaries.mp",
    "SNMFConfig": "saekit.dictionaries.snmf",
    # activations and models
    "TensorStream": "saekit.activations.tensors",
    "collect_activations": "saekit.activations",
    "HookedModel": "saekit.models.hooks",
    "load_model": "saekit.models.hooks",
    # training
    "fit": "saekit.fitting",
    "FitResult": "saekit.fitting",
    # dictionaries
    "Dictionary": "saekit.dictionaries.base",
    "load_dictionary": "saekit.dictionaries.saelens_format",
    # evaluation
    "evaluate": "saekit.eval.evaluate",
    "evaluate_run": "saekit.report",
    # steering
    "steer": "saekit.steering.api",
    "feature_edit": "saekit.steering.api",
    "steer_generate": "saekit.steering.api",
    "run_steering_eval": "saekit.steering.evaluate",
    "SteeringConfig": "saekit.steering.protocol",
    # attribution
    "attribute": "saekit.attribution.attribute",
    "AttributeConfig": "saekit.attribution.config",
    # data selection
    "Selector": "saekit.selection.select",
    "SelectConfig": "saekit.selection.config",
    "load_samples": "saekit.selection.data",
    "select_data": "saekit.selection.select",
    # errors
    "SaekitError": "saekit.errors",
}
"""Public name → the module that defines it."""

__all__ = [
    "__version__",
    "Recipe",
    "ModelConfig",
    "DataConfig",
    "StreamConfig",
    "CacheConfig",
    "SAEConfig",
    "TrainConfig",
    "ReLUConfig",
    "JumpReLUConfig",
    "MatryoshkaConfig",
    "MPConfig",
    "SNMFConfig",
    "TensorStream",
    "collect_activations",
    "HookedModel",
    "load_model",
    "fit",
    "FitResult",
    "Dictionary",
    "load_dictionary",
    "evaluate",
    "evaluate_run",
    "steer",
    "feature_edit",
    "steer_generate",
    "run_steering_eval",
    "SteeringConfig",
    "attribute",
    "AttributeConfig",
    "Selector",
    "SelectConfig",
    "load_samples",
    "select_data",
    "SaekitError",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'saekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # the same names, for type checkers and editors
    from saekit.activations import collect_activations
    from saekit.activations.cache import CacheConfig
    from saekit.activations.stream import StreamConfig
    from saekit.activations.tensors import TensorStream
    from saekit.attribution.attribute import attribute
    from saekit.attribution.config import AttributeConfig
    from saekit.data.text import DataConfig
    from saekit.dictionaries.base import Dictionary
    from saekit.dictionaries.config import SAEConfig
    from saekit.dictionaries.jumprelu import JumpReLUConfig
    from saekit.dictionaries.matryoshka import MatryoshkaConfig
    from saekit.dictionaries.mp import MPConfig
    from saekit.dictionaries.relu import ReLUConfig
    from saekit.dictionaries.saelens_format import load_dictionary
    from saekit.dictionaries.snmf import SNMFConfig
    from saekit.errors import SaekitError
    from saekit.eval.evaluate import evaluate
    from saekit.fitting import FitResult, fit
    from saekit.models.hooks import HookedModel, load_model
    from saekit.models.loading import ModelConfig
    from saekit.recipe import Recipe
    from saekit.report import evaluate_run
    from saekit.selection.config import SelectConfig
    from saekit.selection.data import load_samples
    from saekit.selection.select import Selector, select_data
    from saekit.steering.api import feature_edit, steer, steer_generate
    from saekit.steering.evaluate import run_steering_eval
    from saekit.steering.protocol import SteeringConfig
    from saekit.train.config import TrainConfig
