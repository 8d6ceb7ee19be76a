"""Synthetic transcoder data: input features sent to output features by a known sparse map.

A transcoder's ground truth is a set of units, each of which reads one direction of the input
space and writes one direction of the output space, as an MLP neuron does. Here F input
features e_i fire sparsely (the codes of `FlatSuperposition`: L0 ≈ expected_l0, magnitudes
U(0, 2)), and each writes, through a sparse nonnegative map M (F × G), onto G unit output
features o_j in d_out dims, once its coefficient passes a threshold θ:

    x_BD = c_BF E_FD + σ ε        y_BO = ReLU(c_BF − θ) M_FG O_GO + σ ε' = ReLU(c − θ) U_FO + σ ε'

so input feature i writes u_i = Σ_j M_ij o_j (`effects_FO`; each row mixes `fanout` output
features with weights U(0.5, 1.5)). A transcoder recovers the map when one latent reads e_i
(a column of W_enc) and writes u_i (a row of W_dec): `eval.synthetic_metrics.transcoder_recovery`
scores both sides. The e_i are orthonormal when F ≤ d_in: then reading feature i exactly is
reading along e_i, so encoder columns can be compared with e_i. (Past d_in they overlap, and
the detector that separates feature i from the others is no longer e_i: on 48 features in 32
dims a TopK transcoder whose latents track every feature at correlation 0.98 has encoder
MMCS 0.67.) With θ > 0 the map is not linear, so a skip path alone cannot carry it.

    data = SparseMap(n_features=32, d_in=32, d_out=24, threshold=0.5, seed=0)
    sample = data.sample(4096)                      # sample.x_BD, sample.y_BO, sample.codes_BF
    stream = data.stream(2**16, batch_size=1024, seed=1)   # {"in": x, "out": y}, same rows
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saekit.activations.synthetic import (
    FlatSuperposition,
    gaussian_directions,
    orthonormal_directions,
)
from saekit.activations.tensors import TensorStream
from saekit.errors import SaekitError


class MapSample(NamedTuple):
    """One draw of a sparse map."""

    x_BD: Tensor
    """Inputs: codes_BF @ features_FD plus noise."""
    y_BO: Tensor
    """Outputs: codes_BF @ effects_FO plus noise."""
    codes_BF: Tensor
    """True nonnegative input-feature coefficients (0 where off)."""


class SparseMap:
    """Flat-superposition inputs and their images under a known sparse map."""

    def __init__(
        self,
        n_features: int = 64,
        d_in: int = 32,
        d_out: int = 24,
        n_out_features: int = 48,
        fanout: int = 2,
        expected_l0: float = 4.0,
        threshold: float = 0.0,
        noise_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 1 <= fanout <= n_out_features:
            raise SaekitError(f"fanout must be in [1, n_out_features], got {fanout}.")
        if not 0 <= threshold < 2:
            raise SaekitError(f"threshold must be in [0, 2) (codes are U(0, 2)), got {threshold}.")
        self.inputs = FlatSuperposition(n_features, d_in, expected_l0=expected_l0, seed=seed)
        if n_features <= d_in:
            gen_in = torch.Generator().manual_seed(seed)
            self.inputs.features_FD = orthonormal_directions(n_features, d_in, gen_in)
        self.threshold, self.noise_std, self.seed = threshold, noise_std, seed
        gen = torch.Generator().manual_seed(seed + 7919)
        self.out_features_GO = gaussian_directions(n_out_features, d_out, gen)
        """Unit output feature directions o_j."""
        cols_FK = torch.rand(n_features, n_out_features, generator=gen).argsort(dim=1)[:, :fanout]
        weights_FK = 0.5 + torch.rand(n_features, fanout, generator=gen)
        self.map_FG = torch.zeros(n_features, n_out_features).scatter(1, cols_FK, weights_FK)
        """The sparse map M: input feature i → `fanout` output features, weights in [0.5, 1.5)."""
        self.effects_FO = self.map_FG @ self.out_features_GO
        """u_i = Σ_j M_ij o_j: the output direction (with its norm) input feature i writes."""

    @property
    def features_FD(self) -> Tensor:
        """Unit input feature directions e_i."""
        return self.inputs.features_FD

    def sample(self, n_tokens: int, generator: torch.Generator | None = None) -> MapSample:
        g = torch.Generator().manual_seed(self.seed + 1) if generator is None else generator
        codes_BF = self.inputs.sample_codes(n_tokens, g)
        x_BD = codes_BF @ self.features_FD
        y_BO = (codes_BF - self.threshold).relu() @ self.effects_FO
        if self.noise_std > 0:
            x_BD = x_BD + self.noise_std * torch.randn(x_BD.shape, generator=g)
            y_BO = y_BO + self.noise_std * torch.randn(y_BO.shape, generator=g)
        return MapSample(x_BD, y_BO, codes_BF)

    def stream(
        self,
        n_tokens: int,
        batch_size: int,
        seed: int,
        hook: str = "in",
        output_hook: str = "out",
    ) -> TensorStream:
        """A trainer's stream of {hook: x, output_hook: y} over `n_tokens` rows drawn with
        `seed`, shuffled per epoch (row i of both is the same token)."""
        s = self.sample(n_tokens, generator=torch.Generator().manual_seed(seed))
        return TensorStream({hook: s.x_BD, output_hook: s.y_BO}, batch_size, seed=seed)
