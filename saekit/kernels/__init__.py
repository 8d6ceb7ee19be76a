"""Kernels for sparse codes: a TopK autoencoder with a k-sparse backward, and AuxK selection.

CPU path in plain torch (dense GEMM + CSR products); the same code runs on CUDA.
"""

from __future__ import annotations

from saekit.kernels.aux_k import aux_k_loss, aux_k_loss_dead
from saekit.kernels.sparse_topk import SparseCodes, TopKAutoencoder, topk_autoencoder

__all__ = ["SparseCodes", "TopKAutoencoder", "aux_k_loss", "aux_k_loss_dead", "topk_autoencoder"]
