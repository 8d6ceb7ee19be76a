"""Feature statistics and LLM-free interpretability scores (docs/interpretability.md)."""

from saekit.interp.collect import FeatureCollector, FeatureData
from saekit.interp.config import InterpConfig
from saekit.interp.run import load_interp, run_interp_eval
from saekit.interp.scores import score_features, summarize

__all__ = [
    "FeatureCollector",
    "FeatureData",
    "InterpConfig",
    "load_interp",
    "run_interp_eval",
    "score_features",
    "summarize",
]
