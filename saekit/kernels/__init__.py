"""Kernels for sparse codes: TopK's fused autoencoder, CSR kernels for any L0, AuxK selection.

CPU path in plain torch (dense GEMM + CSR products, MKL); the same code runs on CUDA, where
`saekit.kernels.triton_csr` (the `triton` extra) replaces the CSR products.
"""

from __future__ import annotations

from saekit.kernels.aux_k import aux_k_loss, aux_k_loss_dead
from saekit.kernels.csr import CsrOps, CsrPattern, TorchCsrOps, select_ops
from saekit.kernels.sparse_ops import CsrCodes, csr_decode, csr_pre_acts
from saekit.kernels.sparse_topk import SparseCodes, TopKAutoencoder, topk_autoencoder

__all__ = [
    "CsrCodes",
    "CsrOps",
    "CsrPattern",
    "SparseCodes",
    "TopKAutoencoder",
    "TorchCsrOps",
    "aux_k_loss",
    "aux_k_loss_dead",
    "csr_decode",
    "csr_pre_acts",
    "select_ops",
    "topk_autoencoder",
]
