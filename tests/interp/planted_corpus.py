"""The planted-feature corpus of the interp tests: random tokens with features that fire on
known tokens, a known bigram, or at random (codes generated directly, no model)."""

from __future__ import annotations

import torch

from saekit.interp.run import _shuffled

VOCAB = 40
BOS = 0
T = 32
N_WINDOWS = 256
PLANTED = 8
"""Features 0..7 fire on token j + 1; feature 8 fires on the bigram (11, 12)."""
S = 18
"""Features 9..17 fire at random positions with the density of a single token."""


def planted_codes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens_NT = torch.randint(1, VOCAB, (N_WINDOWS, T), generator=gen)
    for n in torch.nonzero(torch.rand(N_WINDOWS, generator=gen) < 0.5).flatten().tolist():
        p = int(torch.randint(1, T - 1, (1,), generator=gen))
        tokens_NT[n, p : p + 2] = torch.tensor([11, 12])  # the planted bigram in half the windows
    tokens_NT[:, 0] = BOS
    mask_NT = tokens_NT != BOS
    z_NTS = torch.zeros(N_WINDOWS, T, S)
    strength_NT = 1 + 2 * torch.rand(N_WINDOWS, T, generator=gen)
    for j in range(PLANTED):
        z_NTS[..., j] = (tokens_NT == j + 1) * strength_NT
    bigram = torch.zeros_like(mask_NT)
    bigram[:, 1:] = (tokens_NT[:, :-1] == 11) & (tokens_NT[:, 1:] == 12)
    z_NTS[..., PLANTED] = bigram * strength_NT
    fire = torch.rand(N_WINDOWS, T, S - PLANTED - 1, generator=gen) < 1 / (VOCAB - 1)
    z_NTS[..., PLANTED + 1 :] = fire * strength_NT.unsqueeze(-1)
    return tokens_NT, mask_NT, z_NTS * mask_NT.unsqueeze(-1)


def batches(tokens_NT, mask_NT, z_NTS, shuffle: bool, batch: int = 16):
    gen = torch.Generator().manual_seed(1)
    for a in range(0, N_WINDOWS, batch):
        z = z_NTS[a : a + batch]
        m = mask_NT[a : a + batch]
        yield tokens_NT[a : a + batch], m, {"codes": _shuffled(z, m, gen) if shuffle else z}, a
