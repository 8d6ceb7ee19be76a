"""Null controls: the dictionaries every score of the scorecard is compared with.

- `random`: the dictionary with every encoder and decoder direction replaced by a random one
  of the same norm (biases and thresholds kept, so it fires about as often). A score a random
  direction reaches says nothing about what training learned.
- `init`: an untrained dictionary of the same method, width and seed: what training started
  from. Its weights are the method's seeded initialization; the input scale the trained one
  folded in is folded in the same way, and b_dec (which training initializes from the data's
  geometric median) is the trained one's, so both centre the activations alike.

Each method owns how its directions are randomized (`Dictionary.randomize_directions`: MP's
encoder is its decoder, SNMF's encoder is derived from its atoms).
"""

from __future__ import annotations

import copy

import torch

from saekit.dictionaries import Dictionary, build_dictionary

CONTROLS = ("random", "init")
"""The null controls of every score, in the order they are reported."""


def random_directions(sae: Dictionary, seed: int = 0) -> Dictionary:
    """A copy of `sae` with random directions of the same per-latent norms."""
    control = copy.deepcopy(sae)
    control.randomize_directions(torch.Generator().manual_seed(seed))
    return control


@torch.no_grad()
def initialization(sae: Dictionary) -> Dictionary:
    """The untrained dictionary `sae` was trained from (its method, width and seed)."""
    control = build_dictionary(sae.cfg, sae.d_in)
    control.fold_normalization(sae.folded_norm_factor)
    control.b_dec.data.copy_(sae.b_dec.detach().to(control.b_dec))
    return control.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype).eval()


def control_dictionaries(
    sae: Dictionary, seed: int = 0, names: tuple[str, ...] = CONTROLS
) -> dict[str, Dictionary]:
    """{name: control dictionary} for `names` (a subset of CONTROLS)."""
    builders = {"random": lambda: random_directions(sae, seed), "init": lambda: initialization(sae)}
    return {name: builders[name]().eval() for name in names}
