"""Task-specific data selection by monosemantic feature activations (MoNA).

Each instruction sample becomes one sparse vector: SAE (or SNMF) codes of its content tokens,
max- or mean-pooled, top-K sparsified. Pool samples are ranked by generalized Jaccard to a
prototype of the target exemplars (or LESS max over target sub-tasks), with per-feature scale
and IDF weights. Random, BM25, RDS, raw-neuron and sentence-embedding baselines run alongside.

    select_from_specs(run_dir, pool, target, cfg)   `saekit select RUN_DIR --pool --target`
    run_selection_eval(selector, out_dir)           `saekit select RUN_DIR --evaluate`
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataFields": "config",
    "SelectConfig": "config",
    "Sample": "data",
    "load_samples": "data",
    "offline_mix": "data",
    "FinetuneConfig": "finetune",
    "compare_subsets": "finetune",
    "run_selection_eval": "report",
    "Selector": "select",
    "load_selector": "select",
    "select_data": "select",
    "select_from_specs": "select",
    "SparseVectors": "sparse",
}


def __getattr__(name: str) -> Any:
    # Lazy: `saekit --help` imports saekit.selection.cli, which must not pull in matplotlib.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'saekit.selection' has no attribute {name!r}")
    return getattr(importlib.import_module(f"saekit.selection.{_EXPORTS[name]}"), name)


__all__ = [
    "DataFields",
    "FinetuneConfig",
    "Sample",
    "SelectConfig",
    "Selector",
    "SparseVectors",
    "compare_subsets",
    "load_samples",
    "load_selector",
    "offline_mix",
    "run_selection_eval",
    "select_data",
    "select_from_specs",
]
