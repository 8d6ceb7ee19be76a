"""Sparse dictionaries, one method per file, and the registry that builds them by name.

build_dictionary(cfg, d_in)   a fresh, seeded dictionary of method cfg.method
load_dictionary(dir)          a saekit save, or a SAELens-saved SAE imported as saekit
dictionary.save(dir)          cfg.json + sae_weights.safetensors, loadable by SAELens
"""

from __future__ import annotations

from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.batchtopk import BatchTopKSAE
from saekit.dictionaries.config import SAEConfig
from saekit.dictionaries.fitted import Fit, FitData, FittedDictionary
from saekit.dictionaries.jumprelu import JumpReLUConfig, JumpReLUSAE
from saekit.dictionaries.matryoshka import MatryoshkaConfig, MatryoshkaSAE
from saekit.dictionaries.mp import MatchingPursuitSAE, MPConfig
from saekit.dictionaries.registry import DICTIONARIES, build_dictionary, dictionary_class
from saekit.dictionaries.relu import ReLUConfig, ReLUSAE
from saekit.dictionaries.saelens_format import load_dictionary, load_log10_density
from saekit.dictionaries.snmf import SNMFConfig, SNMFDictionary
from saekit.dictionaries.topk import TopKSAE
from saekit.dictionaries.trainable import TrainableDictionary, TrainContext, TrainOutput

__all__ = [
    "DICTIONARIES",
    "BatchTopKSAE",
    "Dictionary",
    "Fit",
    "FitData",
    "FittedDictionary",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "MPConfig",
    "MatchingPursuitSAE",
    "MatryoshkaConfig",
    "MatryoshkaSAE",
    "ReLUConfig",
    "ReLUSAE",
    "SAEConfig",
    "SNMFConfig",
    "SNMFDictionary",
    "TopKSAE",
    "TrainContext",
    "TrainOutput",
    "TrainableDictionary",
    "build_dictionary",
    "dictionary_class",
    "load_dictionary",
    "load_log10_density",
]
