"""Null controls: the dictionaries every score of the scorecard is compared with.

- `random`: the dictionary with every feature turned to one random direction u_j, read and
  written along it (W_enc[:, j] = u_j·‖W_enc[:, j]‖, W_dec[j] = u_j·‖W_dec[j]‖), norms, biases
  and thresholds kept, so it fires about as often. A score a random direction reaches says
  nothing about what training learned.
- `init`: an untrained dictionary of the same method, config, width and seed: what training
  started from. The input scale the trained one folded in is folded in the same way, and
  b_dec (which training initializes from the data's geometric median) is the trained one's,
  so both centre the activations alike.

A score is worth reading when the dictionary beats both: random directions keep the code's
norm statistics and sparsity mechanism (top-k, thresholds), the initialization keeps its
architecture's inductive bias. Each method owns how its directions are randomized
(`Dictionary.randomize_directions`: MP's encoder is its decoder, SNMF's encoder is derived
from its atoms).
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
    transcoder = sae.is_transcoder
    control = build_dictionary(sae.cfg, sae.d_in, sae.d_out if transcoder else None)
    control.fold_normalization(
        sae.folded_norm_factor, sae.folded_out_norm_factor if transcoder else None
    )
    control.b_dec.data.copy_(sae.b_dec.detach().to(control.b_dec))
    return control.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype).eval()


def control_dictionaries(
    sae: Dictionary, seed: int = 0, names: tuple[str, ...] = CONTROLS
) -> dict[str, Dictionary]:
    """{name: control dictionary} for `names` (a subset of CONTROLS)."""
    builders = {"random": lambda: random_directions(sae, seed), "init": lambda: initialization(sae)}
    return {name: builders[name]().eval() for name in names}
