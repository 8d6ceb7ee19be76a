"""Method name → dictionary class, and `build_dictionary`, which every builder goes through."""

from __future__ import annotations

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.batchtopk import BatchTopKSAE
from saekit.dictionaries.config import SAEConfig
from saekit.dictionaries.jumprelu import JumpReLUSAE
from saekit.dictionaries.matryoshka import MatryoshkaSAE
from saekit.dictionaries.mp import MatchingPursuitSAE
from saekit.dictionaries.relu import ReLUSAE
from saekit.dictionaries.snmf import SNMFDictionary
from saekit.dictionaries.topk import TopKSAE
from saekit.errors import SaekitError, closest

DICTIONARIES: dict[str, type[Dictionary]] = {
    cls.method: cls
    for cls in (
        ReLUSAE,
        TopKSAE,
        BatchTopKSAE,
        JumpReLUSAE,
        MatryoshkaSAE,
        MatchingPursuitSAE,
        SNMFDictionary,
    )
}
"""method name (SAEConfig.method) → class."""


def dictionary_class(method: str) -> type[Dictionary]:
    """The class of `method`; an unknown name lists the valid ones."""
    cls = DICTIONARIES.get(method)
    if cls is None:
        hint = closest(method, DICTIONARIES)
        did = f" Did you mean {hint[0]!r}?" if hint else ""
        raise SaekitError(
            f"Unknown dictionary method {method!r}.{did} Available: {', '.join(DICTIONARIES)}."
        )
    return cls


def build_dictionary(cfg: SAEConfig, d_in: int, d_out: int | None = None) -> Dictionary:
    """A freshly initialized dictionary of method `cfg.method` reading d_in-wide activations
    (and, for a transcoder, writing d_out-wide ones; default d_in)."""
    cls = dictionary_class(cfg.method)
    return cls(cfg, d_in) if d_out is None else cls(cfg, d_in, d_out)  # type: ignore[call-arg]
