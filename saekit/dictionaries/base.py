"""The one small interface every sparse dictionary shares.

A dictionary knows nothing about language models. Shapes use suffixes: B batch (tokens),
D d_in, S d_sae, K active latents per token.

    encode(x_BD) -> z_BS          dense codes (zeros where inactive)
    decode(z_BS) -> x_hat_BD
    forward(x_BD) -> x_hat_BD
    training_forward(x_BD, ctx) -> TrainOutput(x_hat_BD, z_BS, losses={name: scalar}[, codes])
    W_enc (D, S), b_enc (S), W_dec (S, D), b_dec (D)   -- SAELens orientation
    save(dir) / load(dir)         cfg.json + sae_weights.safetensors, SAELens-loadable
    post_step()                   hook after each optimizer step (JumpReLU clamps θ ≥ 0)
    fold_normalization(factor)    make a model trained on x·factor take raw x

The trainer owns optimization; a dictionary owns its forward and its named loss terms. The
trainer sums `losses` for the backward pass and logs each term. Each loss term already
carries its coefficient; coefficients a controller may steer live in `sparsity_coefficient`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.errors import SaekitError
from saekit.kernels.aux_k import aux_k_loss as aux_k_loss
from saekit.kernels.aux_k import resolve_k_aux as resolve_k_aux
from saekit.kernels.csr import KernelMode
from saekit.kernels.sparse_ops import CsrCodes
from saekit.kernels.sparse_topk import SparseCodes

DictionaryT = TypeVar("DictionaryT", bound="Dictionary")

Method = Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka", "mp", "snmf"]


@dataclass(frozen=True)
class SAEConfig:
    """What dictionary to train on one hook. d_in comes from the hook's width."""

    method: Method = "topk"
    """Architecture: relu (L1), topk, batchtopk, jumprelu, matryoshka (BatchTopK), mp, snmf."""
    hook: str = ""
    """Hook point this dictionary reads; empty = the first hook of the stream."""
    d_sae: int = 9216
    """Number of latents (dictionary width)."""
    k: int = 32
    """Active latents per token (topk, batchtopk, matryoshka, mp)."""
    target_l0: float | None = None
    """relu/jumprelu: steer the sparsity coefficient so the final L0 lands here (±10%)."""
    l1_coefficient: float = 5.0
    """relu: weight of the decoder-norm-weighted L1 penalty (initial value if target_l0)."""
    l0_coefficient: float = 1.0
    """jumprelu: weight of the step-function L0 penalty (initial value if target_l0)."""
    jumprelu_init_threshold: float = 0.01
    """jumprelu: initial threshold (kept in fp32, parametrized directly, not via exp)."""
    jumprelu_bandwidth: float = 0.05
    """jumprelu: width of the rectangle kernel of the straight-through estimator."""
    matryoshka_widths: tuple[int, ...] = ()
    """matryoshka: nested prefix widths ending at d_sae; empty = d_sae/16, /4, /1."""
    aux_k_coefficient: float = 1 / 32
    """Weight of the variance-normalized AuxK dead-latent loss (0 disables it)."""
    aux_k: int | None = None
    """Latents in the AuxK reconstruction; None = d_in // 2."""
    seed: int = 0
    """Seed of the weight initialization."""
    snmf_sparsity: float = 0.01
    """snmf: fraction of d_in each feature keeps by winner-take-all (⌈s·d_in⌉ neurons)."""
    snmf_init: Literal["random", "svd", "kmeans"] = "random"
    """snmf: initial codes: random U(0,1), SVD (Ding et al. 2010) or k-means one-hot."""
    snmf_max_iter: int = 2000
    """snmf: full-batch iterations at most (2,000 in the paper's demo scripts)."""
    snmf_patience: int = 500
    """snmf: stop after this many iterations without an improvement > snmf_tol·‖A‖²."""
    snmf_tol: float = 1e-6
    """snmf: relative tolerance; the loss ‖A − FGᵀ‖² must drop by more than tol·‖A‖²."""
    snmf_stream_passes: int = 0
    """snmf: 0 = fit train.total_tokens in memory; N > 0 = stream them, at most N passes."""
    snmf_hierarchy: tuple[int, ...] = ()
    """snmf: ranks of coarser levels, each an SNMF of the previous level's features."""
    mp_tied: bool = True
    """mp: select with the decoder atoms (False: separate encoder rows; not SAELens-loadable)."""
    mp_dropout: float = 0.0
    """mp: probability that an atom is barred from a training batch's pursuit (atom dropout)."""
    mp_revival_coefficient: float = 0.0
    """mp: weight of the term pulling dead atoms toward the mean final residual (0 disables)."""
    kernels: KernelMode = "auto"
    """topk/batchtopk/jumprelu/matryoshka training after the encoder GEMM: auto = sparse
    kernels (Triton on CUDA when installed, else torch's CSR kernels), triton, torch, or
    dense (plain autograd on dense codes: the reference the sparse paths are tested against)."""


class TrainOutput:
    """What a training forward returns: the reconstruction, the named scalar loss terms (the
    trainer minimizes their sum) and the codes, dense (`z_BS`) or sparse (`codes`: values and
    indices of the kept latents). Sparse codes build z_BS only if it is read."""

    def __init__(
        self,
        x_hat_BD: Tensor,
        z_BS: Tensor | None,
        losses: dict[str, Tensor],
        codes: SparseCodes | CsrCodes | None = None,
    ) -> None:
        self.x_hat_BD, self.losses, self.codes, self._z_BS = x_hat_BD, losses, codes, z_BS

    @property
    def z_BS(self) -> Tensor:
        """Codes after the activation, dense (zeros where inactive)."""
        if self._z_BS is None:
            assert self.codes is not None, "TrainOutput needs dense (z_BS) or sparse codes"
            self._z_BS = self.codes.dense()
        return self._z_BS

    def firing_counts_S(self) -> Tensor:
        """Rows in which each latent fired (int64); a scatter of the sparse codes if given."""
        codes = self.codes
        return codes.firing_counts_S() if codes is not None else (self.z_BS != 0).sum(dim=0)


@dataclass
class TrainContext:
    """Per-step information the trainer passes into `training_forward`."""

    dead_mask_S: Tensor | None = None
    """Latents that have not fired in the dead window (for AuxK)."""
    sparsity_scale: float = 1.0
    """Sparsity-warmup multiplier on the sparsity penalty (0 → 1 over warmup)."""
    extras: dict[str, float] = field(default_factory=dict)


class Dictionary(nn.Module):
    """Base class: parameters in SAELens orientation, save/load, decoder-norm helpers."""

    method: ClassVar[str] = ""
    """Registry key, equal to SAEConfig.method."""
    unit_norm_decoder: ClassVar[bool] = True
    """Whether the trainer keeps decoder rows at unit norm and projects their gradients."""
    saelens_architecture: ClassVar[str] = ""
    """SAELens `architecture` written to cfg.json ("" = this class cannot be saved for SAELens)."""
    keep_dtypes: ClassVar[dict[str, torch.dtype]] = {}
    """Parameters/buffers that keep their dtype through `.to(bf16)` (thresholds)."""

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    def __init__(self, cfg: SAEConfig, d_in: int) -> None:
        super().__init__()
        if d_in < 1:
            raise SaekitError(f"d_in must be >= 1, got {d_in}: the hook's activations are empty.")
        if cfg.d_sae < 1:
            raise SaekitError(f"d_sae must be >= 1, got {cfg.d_sae}. Set d_sae, e.g. 16 * d_in.")
        self.cfg = cfg
        self.d_in = d_in
        self.d_sae = cfg.d_sae
        self.sparsity_coefficient: float | None = None
        """Mutable sparsity weight (relu: L1, jumprelu: L0) a target-L0 controller may steer."""
        self.folded_norm_factor = 1.0
        """Input scale folded into the weights (1.0 = trained on raw activations)."""
        self.provenance: dict[str, Any] = {}
        """JSON-able facts the trainer records (model_name, tokens, ...); saved in cfg.json."""

    def init_tied_weights(self) -> None:
        """Unit-norm random decoder rows (seeded), W_enc = W_decᵀ, zero biases."""
        gen = torch.Generator().manual_seed(self.cfg.seed)
        W_dec_SD = torch.randn(self.d_sae, self.d_in, generator=gen)
        W_dec_SD /= W_dec_SD.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec_SD)
        self.W_enc = nn.Parameter(W_dec_SD.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        # The trainer overwrites b_dec with the geometric median of a sample before step 0.
        self.b_dec = nn.Parameter(torch.zeros(self.d_in))

    def pre_acts(self, x_BD: Tensor) -> Tensor:
        """Encoder pre-activations with pre-bias centering: (x − b_dec) W_enc + b_enc."""
        # linear seeds the GEMM's output with b_enc: no second B×S read-modify-write pass.
        return F.linear(x_BD.to(self.W_enc.dtype) - self.b_dec, self.W_enc.t(), self.b_enc)

    def encode(self, x_BD: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z_BS: Tensor) -> Tensor:
        return z_BS @ self.W_dec + self.b_dec

    def forward(self, x_BD: Tensor) -> Tensor:
        return self.decode(self.encode(x_BD))

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        raise NotImplementedError

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (called by the trainer after each step)."""
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the gradient component along each (unit) decoder row, before the step."""
        if self.W_dec.grad is None:
            return
        W_SD, g_SD = self.W_dec.data, self.W_dec.grad
        # In place with one S×D temporary (vecdot's product), not two: 6 ms instead of 20 ms
        # of CPU at 9216×576.
        g_SD.addcmul_(torch.linalg.vecdot(g_SD, W_SD).unsqueeze(1), W_SD, value=-1)

    def post_step(self) -> None:
        """Called by the trainer after every optimizer step (and decoder renorm)."""

    @torch.no_grad()
    def fold_normalization(self, factor: float) -> None:
        """Fold the training input scale into the weights, so the model takes RAW x.

        Trained on x' = f·x:  z = act((f·x − b_dec) W_enc + b_enc),  x̂ = (z W_dec + b_dec) / f.
        Since f·x − b_dec = f·(x − b_dec/f):   W_enc ← f·W_enc,  b_dec ← b_dec/f  (encoder), and
        x̂ = z (W_dec/f) + b_dec/f:             W_dec ← W_dec/f                      (decoder).
        Pre-activations are unchanged, so b_enc and every threshold θ stay as they are and the
        codes are identical. Decoder rows end with norm 1/f: fold only for export, not mid-run.
        """
        if not factor > 0:
            raise SaekitError(f"Normalization factor must be > 0, got {factor}.")
        self.W_enc.data *= factor
        self.W_dec.data /= factor
        self.b_dec.data /= factor
        self.folded_norm_factor *= factor

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        kept = {name: getattr(self, name).data for name in self.keep_dtypes}
        out = super()._apply(fn, recurse)
        # Re-derive from the pre-cast tensor: bf16 would round a 0.01 threshold to 0.01001 and
        # Adam's ~1e-4 steps on it to nothing.
        for name, dtype in self.keep_dtypes.items():
            moved = getattr(self, name)
            moved.data = kept[name].to(device=moved.device, dtype=dtype)
        return out

    # -- save / load (format in saelens_format.py) ------------------------------------------

    def saelens_config(self) -> dict[str, Any]:
        """Architecture-specific SAELens cfg.json keys (e.g. topk's k)."""
        return {}

    def export_tensors(self) -> dict[str, Tensor]:
        """Weights under SAELens names, as SAELens' inference class of this architecture."""
        return {n: getattr(self, n).detach() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}

    def export_state(self) -> dict[str, Any]:
        """JSON-able state beyond the weights, restored exactly by `import_tensors`."""
        return {"sparsity_coefficient": self.sparsity_coefficient}

    @torch.no_grad()
    def import_tensors(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        """Copy SAELens-named weights (shapes already checked) and saved state in place."""
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(self, name).data.copy_(tensors[name])
        if state.get("sparsity_coefficient") is not None:
            self.sparsity_coefficient = float(state["sparsity_coefficient"])

    def save(self, path: str | Path, log10_density_S: Tensor | None = None) -> Path:
        """Write cfg.json + sae_weights.safetensors (+ sparsity.safetensors) atomically."""
        from saekit.dictionaries.saelens_format import save_dictionary

        return save_dictionary(self, path, log10_density_S)

    @classmethod
    def load(cls: type[DictionaryT], path: str | Path) -> DictionaryT:
        """Load a saekit or SAELens save; raises SaekitError if it is not a `cls`."""
        from saekit.dictionaries.saelens_format import load_dictionary

        loaded = load_dictionary(path)
        if not isinstance(loaded, cls):
            raise SaekitError(
                f"{path} holds a {loaded.method!r} dictionary, not {cls.__name__}. "
                "Use saekit.dictionaries.load_dictionary(path) to load any method."
            )
        return loaded


def check_k(cfg: SAEConfig) -> None:
    """TopK-family validation: 1 <= k < d_sae."""
    if cfg.k < 1:
        raise SaekitError(f"k must be >= 1, got {cfg.k}. Typical values are 32-128.")
    if cfg.k >= cfg.d_sae:
        raise SaekitError(
            f"k={cfg.k} must be smaller than d_sae={cfg.d_sae}: with k >= d_sae nothing is "
            "sparse. Lower k or raise d_sae."
        )
    if cfg.aux_k is not None and cfg.aux_k < 1:
        raise SaekitError(f"aux_k must be >= 1 or null (= d_in // 2), got {cfg.aux_k}.")


def sum_sq_error(x_hat_BD: Tensor, x_BD: Tensor) -> Tensor:
    """Squared error summed over d_in, mean over the batch (the `mse` term everywhere)."""
    return (x_hat_BD.float() - x_BD.float()).pow(2).sum(dim=-1).mean()
