"""Sparse dictionaries, one architecture per file, and the registry that builds them by name.

build_dictionary(cfg, d_in)   a fresh, seeded dictionary of method cfg.method
load_dictionary(dir)          a saekit save, or a SAELens-saved SAE imported as saekit
dictionary.save(dir)          cfg.json + sae_weights.safetensors, loadable by SAELens
"""

from __future__ import annotations

from saekit.dictionaries.base import Dictionary, SAEConfig, TrainContext, TrainOutput
from saekit.dictionaries.batchtopk import BatchTopKSAE
from saekit.dictionaries.jumprelu import JumpReLUSAE
from saekit.dictionaries.matryoshka import MatryoshkaSAE
from saekit.dictionaries.mp import MatchingPursuitSAE
from saekit.dictionaries.relu import ReLUSAE
from saekit.dictionaries.saelens_format import load_dictionary, load_log10_density
from saekit.dictionaries.snmf import SNMFDictionary
from saekit.dictionaries.topk import TopKSAE
from saekit.errors import SaekitError, closest

DICTIONARIES: dict[str, type[Dictionary]] = {
    cls.method: cls for cls in (ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE)
}
"""method name (SAEConfig.method) → class. Other methods register here by the same key."""
DICTIONARIES["snmf"] = SNMFDictionary
DICTIONARIES["mp"] = MatchingPursuitSAE


def build_dictionary(cfg: SAEConfig, d_in: int) -> Dictionary:
    """A freshly initialized dictionary of method `cfg.method` reading d_in-wide activations."""
    cls = DICTIONARIES.get(cfg.method)
    if cls is None:
        hint = closest(cfg.method, DICTIONARIES)
        did = f" Did you mean {hint[0]!r}?" if hint else ""
        raise SaekitError(
            f"Unknown dictionary method {cfg.method!r}.{did} Available: {', '.join(DICTIONARIES)}."
        )
    return cls(cfg, d_in)


__all__ = [
    "DICTIONARIES",
    "BatchTopKSAE",
    "Dictionary",
    "JumpReLUSAE",
    "MatryoshkaSAE",
    "ReLUSAE",
    "SAEConfig",
    "SNMFDictionary",
    "TopKSAE",
    "TrainContext",
    "TrainOutput",
    "build_dictionary",
    "load_dictionary",
    "load_log10_density",
]
