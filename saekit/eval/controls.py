"""Null controls of a dictionary: what a score reads when the features carry no learning.

random_directions  the same dictionary with every feature's encoder column and decoder row
                   turned to one random direction, keeping both norms, biases and thresholds
untrained          a dictionary of the same method, config and width at its initialization

A score is worth reading when the dictionary beats both: random directions keep the code's
norm statistics and sparsity mechanism (top-k, thresholds), the untrained dictionary keeps its
architecture's inductive bias.
"""

from __future__ import annotations

import copy

import torch

from saekit.dictionaries import Dictionary, build_dictionary

CONTROLS = ("random_directions", "untrained")


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


def untrained(sae: Dictionary) -> Dictionary:
    """A fresh dictionary of `sae`'s method, config (and seed) and width."""
    control = build_dictionary(sae.cfg, sae.d_in)
    control.fold_normalization(sae.folded_norm_factor)  # take the same raw activations
    return control.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype).eval()


def controls(sae: Dictionary, seed: int = 0) -> dict[str, Dictionary]:
    """Both controls of `sae`, by name."""
    return {"random_directions": random_directions(sae, seed), "untrained": untrained(sae)}
