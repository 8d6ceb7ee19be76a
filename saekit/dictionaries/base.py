"""The interface every dictionary shares, whichever way it was learned.

A dictionary knows nothing about language models. Shapes use suffixes: B batch (tokens),
D d_in, S d_sae, K active latents per token, O d_out (= D except for transcoders).

    encode(x_BD) -> z_BS          dense codes (zeros where inactive)
    decode(z_BS) -> x_hat_BO
    forward(x_BD) -> x_hat_BO     decode(encode(x)), plus the skip path of a skip transcoder
    W_enc (D, S), b_enc (S), W_dec (S, O), b_dec (O)   -- SAELens orientation
    W_skip (O, D) or None         a skip transcoder's linear path
    save(dir)                     cfg.json + sae_weights.safetensors, SAELens-loadable
    fold_normalization(factor)    make a model trained on x·factor take raw x

Two kinds build on it: `TrainableDictionary` (trainable.py: the SAE family, trained by
gradient steps) and `FittedDictionary` (fitted.py: SNMF, fitted in closed form). Evaluation,
steering, selection and interpretability read this interface only.

A transcoder (cfg.output_hook set; transcoder.py) reads d_in-wide activations and predicts
d_out-wide ones at another hook: its encoder skips the pre-bias centering (b_dec is an output
bias), and a skip transcoder adds x W_skipᵀ.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.dictionaries.save import save_dictionary
from saekit.dictionaries.transcoder import saelens_architecture as transcoder_architecture
from saekit.errors import SaekitError

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig


class Dictionary(nn.Module):
    """Base class: parameters in SAELens orientation, save, normalization folding."""

    method: ClassVar[str] = ""
    """Registry key, equal to SAEConfig.method."""
    saelens_architecture: ClassVar[str] = ""
    """SAELens `architecture` written to cfg.json ("" = this class cannot be saved for SAELens)."""
    keep_dtypes: ClassVar[dict[str, torch.dtype]] = {}
    """Parameters/buffers that keep their dtype through `.to(bf16)` (thresholds)."""

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    W_skip: nn.Parameter | None

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None) -> None:
        super().__init__()
        if d_in < 1:
            raise SaekitError(f"d_in must be >= 1, got {d_in}: the hook's activations are empty.")
        if cfg.d_sae < 1:
            raise SaekitError(f"d_sae must be >= 1, got {cfg.d_sae}. Set d_sae, e.g. 16 * d_in.")
        if d_out is not None and d_out != d_in and not cfg.output_hook:
            raise SaekitError(
                f"d_out={d_out} differs from d_in={d_in}, but an SAE reconstructs what it reads; "
                "set output_hook to train a transcoder."
            )
        if d_out is not None and d_out < 1:
            raise SaekitError(f"d_out must be >= 1, got {d_out}: the output hook is empty.")
        self.cfg = cfg
        self.d_in = d_in
        self.d_out = d_in if d_out is None else d_out
        """Width of what the decoder writes: d_in for an SAE, the output hook's for a transcoder."""
        self.d_sae = cfg.d_sae
        self.register_parameter("W_skip", None)
        self.folded_norm_factor = 1.0
        """Input scale folded into the weights (1.0 = trained on raw activations)."""
        self.folded_out_norm_factor = 1.0
        """A transcoder's output scale folded into the weights."""
        self.provenance: dict[str, Any] = {}
        """JSON-able facts the trainer records (model_name, tokens, ...); saved in cfg.json."""

    @property
    def is_transcoder(self) -> bool:
        """Whether the decoder writes another hook than the encoder reads (cfg.output_hook)."""
        return bool(self.cfg.output_hook)

    @property
    def write_hook(self) -> str:
        """The hook the decoder writes: output_hook for a transcoder, else the hook it reads."""
        return self.cfg.output_hook or self.cfg.hook

    @property
    def input_bias(self) -> Tensor | None:
        """The bias subtracted from x before encoding: b_dec for an SAE (pre-bias centering),
        None for a transcoder (its b_dec is an output-space bias)."""
        return None if self.is_transcoder else self.b_dec

    def centered(self, x_BD: Tensor) -> Tensor:
        """x in the encoder's dtype, minus the input bias if there is one."""
        x_BD = x_BD.to(self.W_enc.dtype)
        b_in_D = self.input_bias
        return x_BD if b_in_D is None else x_BD - b_in_D

    def pre_acts(self, x_BD: Tensor) -> Tensor:
        """Encoder pre-activations: (x − b_dec) W_enc + b_enc (a transcoder: x W_enc + b_enc)."""
        # linear seeds the GEMM's output with b_enc: no second B×S read-modify-write pass.
        return F.linear(self.centered(x_BD), self.W_enc.t(), self.b_enc)

    def encode(self, x_BD: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z_BS: Tensor) -> Tensor:
        return z_BS @ self.W_dec + self.b_dec

    def add_skip(self, x_BD: Tensor, x_hat_BO: Tensor) -> Tensor:
        """x̂ plus the skip path x W_skipᵀ of a skip transcoder (x̂ itself otherwise)."""
        if self.W_skip is None:
            return x_hat_BO
        return x_hat_BO + F.linear(x_BD.to(self.W_skip.dtype), self.W_skip)

    def reconstruct(self, x_BD: Tensor, z_BS: Tensor) -> Tensor:
        """The dictionary's output for input x with codes z: decode(z) plus any skip path."""
        return self.add_skip(x_BD, self.decode(z_BS))

    def forward(self, x_BD: Tensor) -> Tensor:
        return self.reconstruct(x_BD, self.encode(x_BD))

    def feature_parents(self) -> list[int] | None:
        """For hierarchical dictionaries, the coarser feature each feature belongs to."""
        return None

    @torch.no_grad()
    def randomize_directions(self, gen: torch.Generator) -> None:
        """Turn feature j to one random unit direction u_j, read and written along it, keeping
        the norms of W_enc[:, j] and W_dec[j], in place (the scorecard's null control,
        eval/controls.py); biases, thresholds and a skip path stay. A transcoder reads and
        writes different spaces: its encoder and decoder directions are drawn independently."""
        u_SO = torch.nn.functional.normalize(torch.randn(self.W_dec.shape, generator=gen), dim=1)
        u_SO = u_SO.to(self.W_dec)
        if self.d_out == self.d_in:
            self.W_enc.copy_((u_SO * self.W_enc.norm(dim=0)[:, None]).T)
        else:
            self.W_enc.copy_(random_like(self.W_enc, 0, gen))
        self.W_dec.copy_(u_SO * self.W_dec.norm(dim=1, keepdim=True))

    @torch.no_grad()
    def fold_normalization(self, factor: float, out_factor: float | None = None) -> None:
        """Fold the training input scale into the weights, so the model takes RAW x.

        Trained on x' = f·x:  z = act((f·x − b_dec) W_enc + b_enc),  x̂ = (z W_dec + b_dec) / f.
        Since f·x − b_dec = f·(x − b_dec/f):   W_enc ← f·W_enc,  b_dec ← b_dec/f  (encoder), and
        x̂ = z (W_dec/f) + b_dec/f:             W_dec ← W_dec/f                      (decoder).
        Pre-activations are unchanged, so b_enc and every threshold θ stay as they are and the
        codes are identical. Decoder rows end with norm 1/f: fold only for export, not mid-run.

        A transcoder trained on x' = f·x, y' = g·y (`out_factor` g, default f) has no input
        centering: W_enc ← f·W_enc, and ŷ = (z W_dec + b_dec + f·x W_skipᵀ)/g gives
        W_dec ← W_dec/g, b_dec ← b_dec/g, W_skip ← W_skip·f/g.
        """
        g = self.check_factors(factor, out_factor)
        self.W_enc.data *= factor
        self.W_dec.data /= g
        self.b_dec.data /= g
        if self.W_skip is not None:
            self.W_skip.data *= factor / g
        self.folded_norm_factor *= factor
        if self.is_transcoder:
            self.folded_out_norm_factor *= g

    def check_factors(self, factor: float, out_factor: float | None) -> float:
        """The output factor (default: the input's), both checked; only a transcoder reads and
        writes two spaces, so only it may fold two different factors."""
        check_factor(factor)
        g = factor if out_factor is None else out_factor
        check_factor(g)
        if not self.is_transcoder and g != factor:
            raise SaekitError("An SAE reads and writes one space: fold one factor, not two.")
        return g

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        kept = {name: getattr(self, name).data for name in self.keep_dtypes}
        out = super()._apply(fn, recurse)
        # Re-derive from the pre-cast tensor: bf16 would round a 0.01 threshold to 0.01001 and
        # Adam's ~1e-4 steps on it to nothing.
        for name, dtype in self.keep_dtypes.items():
            moved = getattr(self, name)
            moved.data = kept[name].to(device=moved.device, dtype=dtype)
        return out

    # -- save (format in save.py; loading in saelens_format.py) ----------------------------

    def saelens_config(self) -> dict[str, Any]:
        """Architecture-specific SAELens cfg.json keys (e.g. topk's k)."""
        return {}

    def saelens_name(self) -> str:
        """The SAELens architecture this dictionary is saved as ("" = saekit only)."""
        if not self.is_transcoder:
            return self.saelens_architecture
        skip = self.W_skip is not None
        return transcoder_architecture(self.saelens_architecture, skip, self.d_in, self.d_out)

    def export_tensors(self) -> dict[str, Tensor]:
        """Weights under SAELens names, as SAELens' inference class of this architecture."""
        names = (
            "W_enc",
            "b_enc",
            "W_dec",
            "b_dec",
            *(("W_skip",) if self.W_skip is not None else ()),
        )
        return {n: getattr(self, n).detach() for n in names}

    def export_state(self) -> dict[str, Any]:
        """JSON-able state beyond the weights, restored exactly by `import_tensors`."""
        return {}

    @torch.no_grad()
    def import_tensors(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        """Copy SAELens-named weights (shapes already checked) and saved state in place."""
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(self, name).data.copy_(tensors[name])
        if self.W_skip is not None:
            self.W_skip.data.copy_(tensors["W_skip"])

    def save(self, path: str | Path, log10_density_S: Tensor | None = None) -> Path:
        """Write cfg.json + sae_weights.safetensors (+ sparsity.safetensors) atomically;
        `saekit.load_dictionary(path)` and `sae_lens.SAE.load_from_disk(path)` read it."""
        return save_dictionary(self, path, log10_density_S)


def random_like(weight: Tensor, dim: int, gen: torch.Generator) -> Tensor:
    """Gaussian directions with the norms `weight` has along `dim`."""
    r = torch.randn(weight.shape, generator=gen).to(weight)
    return r / r.norm(dim=dim, keepdim=True) * weight.norm(dim=dim, keepdim=True)


def check_factor(factor: float) -> None:
    if not factor > 0:
        raise SaekitError(f"Normalization factor must be > 0, got {factor}.")
