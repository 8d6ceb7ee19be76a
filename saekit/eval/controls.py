"""Null controls of a dictionary: what a score reads when the features carry no learning.

random  the same dictionary with every feature's encoder column and decoder row turned to one
        random direction, keeping both norms, biases and thresholds (so it fires about as often)
init    a dictionary of the same method, config, seed and width at its initialization, with
        the trained one's input scale folded in and its b_dec (training starts b_dec from the
        data's geometric median), so both centre the activations alike

A score is worth reading when the dictionary beats both: random directions keep the code's
norm statistics and sparsity mechanism (top-k, thresholds), the initialization keeps its
architecture's inductive bias.
"""

from __future__ import annotations

import copy

import torch

from saekit.dictionaries import Dictionary, build_dictionary

CONTROLS = ("random", "init")
"""The null controls, in the order they are reported."""


@torch.no_grad()
def random_directions(sae: Dictionary, seed: int = 0) -> Dictionary:
    """A copy of `sae` whose feature j reads and writes along a random unit vector u_j:
    W_enc[:, j] = u_j·‖W_enc[:, j]‖ and W_dec[j] = u_j·‖W_dec[j]‖."""
    control = copy.deepcopy(sae).cpu()
    gen = torch.Generator().manual_seed(seed)
    u_SD = torch.randn(sae.d_sae, sae.d_in, generator=gen, dtype=torch.float64)
    u_SD /= u_SD.norm(dim=1, keepdim=True)
    enc_norm_S = control.W_enc.double().norm(dim=0)
    dec_norm_S = control.W_dec.double().norm(dim=1)
    control.W_enc.copy_((u_SD * enc_norm_S[:, None]).T)
    control.W_dec.copy_(u_SD * dec_norm_S[:, None])
    return control.to(sae.W_dec.device)


@torch.no_grad()
def initialization(sae: Dictionary) -> Dictionary:
    """The untrained dictionary `sae` was trained from (its method, config, seed and width)."""
    control = build_dictionary(sae.cfg, sae.d_in)
    control.fold_normalization(sae.folded_norm_factor)  # take the same raw activations
    control.b_dec.data.copy_(sae.b_dec.detach().to(control.b_dec))
    return control.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype).eval()


def control_dictionaries(
    sae: Dictionary, seed: int = 0, names: tuple[str, ...] = CONTROLS
) -> dict[str, Dictionary]:
    """{name: control dictionary} for `names` (a subset of CONTROLS)."""
    builders = {"random": lambda: random_directions(sae, seed), "init": lambda: initialization(sae)}
    return {name: builders[name]().eval() for name in names}
