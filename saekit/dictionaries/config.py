"""SAEConfig: one entry of a recipe's `saes:` list.

The fields every method shares live here; each method's own options are a nested section
defined in that method's file (`relu:` in relu.py, `snmf:` in snmf.py, ...), and only the
section of the entry's method may be given:

    saes:
      - method: jumprelu
        d_sae: 4608
        jumprelu: {target_l0: 32, bandwidth: 0.05}

Recipes and saves written before the sections existed (flat keys such as `target_l0` or
`snmf_sparsity`) still load for one release: `upgrade_legacy` maps them and says how to
rewrite them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Literal

from saekit.dictionaries.jumprelu import JumpReLUConfig
from saekit.dictionaries.matryoshka import MatryoshkaConfig
from saekit.dictionaries.mp import MPConfig
from saekit.dictionaries.relu import ReLUConfig
from saekit.dictionaries.snmf import SNMFConfig
from saekit.dictionaries.transcoder import check_transcoder
from saekit.errors import SaekitDeprecation, SaekitError
from saekit.kernels.csr import KernelMode

Method = Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka", "mp", "snmf"]

SECTIONS = ("relu", "jumprelu", "matryoshka", "mp", "snmf")
"""Methods with options of their own; each is also the name of its SAEConfig section."""


@dataclass(frozen=True)
class SAEConfig:
    """What dictionary to train on one hook. d_in comes from the hook's width."""

    method: Method = "topk"
    """Architecture: relu (L1), topk, batchtopk, jumprelu, matryoshka (BatchTopK), mp, snmf."""
    hook: str = ""
    """Hook point this dictionary reads; empty = the first hook of the stream."""
    output_hook: str = ""
    """Hook the decoder predicts, making a transcoder (relu, topk, batchtopk, jumprelu,
    matryoshka): e.g. hook blocks.6.ln2.hook_normalized, output_hook blocks.6.hook_mlp_out
    (HF: model.layers.6.mlp:in → model.layers.6.mlp). Both must be streamed. Empty = an SAE."""
    skip_connection: bool = False
    """Transcoders: add a linear path x·W_skipᵀ from hook to output_hook (zero at init,
    trained jointly): a skip transcoder."""
    d_sae: int = 9216
    """Number of latents (dictionary width)."""
    k: int = 32
    """Active latents per token (topk, batchtopk, matryoshka, mp)."""
    aux_k_coefficient: float = 1 / 32
    """Weight of the variance-normalized AuxK dead-latent loss (0 disables it)."""
    aux_k: int | None = None
    """Latents in the AuxK reconstruction; None = d_in // 2."""
    seed: int = 0
    """Seed of the weight initialization."""
    kernels: KernelMode = "auto"
    """topk/batchtopk/jumprelu/matryoshka training after the encoder GEMM: auto = sparse
    kernels (Triton on CUDA when installed, else torch's CSR kernels), triton, torch, or
    dense (plain autograd on dense codes: the reference the sparse paths are tested against)."""
    relu: ReLUConfig | None = None
    """Options of method relu (relu.py); unset = their defaults."""
    jumprelu: JumpReLUConfig | None = None
    """Options of method jumprelu (jumprelu.py); unset = their defaults."""
    matryoshka: MatryoshkaConfig | None = None
    """Options of method matryoshka (matryoshka.py); unset = their defaults."""
    mp: MPConfig | None = None
    """Options of method mp (mp.py); unset = their defaults."""
    snmf: SNMFConfig | None = None
    """Options of method snmf (snmf.py); unset = their defaults."""

    def __post_init__(self) -> None:
        given = [s for s in SECTIONS if getattr(self, s) is not None and s != self.method]
        if given:
            raise SaekitError(
                f"Section {given[0]!r} holds options of method {given[0]}, but this entry's "
                f"method is {self.method!r}: remove the section or change the method."
            )
        check_transcoder(self)
        if self.aux_k is not None and self.aux_k < 1:
            raise SaekitError(f"aux_k must be >= 1 or null (= d_in // 2), got {self.aux_k}.")

    def options(self) -> Any:
        """This method's section, its defaults when unset (None for methods without one)."""
        if self.method not in SECTIONS:
            return None
        section = getattr(self, self.method)
        if section is None:
            section = _SECTION_TYPES[self.method]()
        return section

    def canonical(self) -> SAEConfig:
        """The same config with its method's section filled in (defaults written out), so
        two spellings of one dictionary compare equal (a run's identity on resume)."""
        if self.method not in SECTIONS:
            return self
        return replace(self, **{self.method: self.options()})

    @staticmethod
    def upgrade_legacy(data: dict[str, Any], where: str) -> dict[str, Any]:
        """Map the flat keys of saekit 0.1 (`target_l0`, `snmf_sparsity`, ...) into sections.

        A key belonging to another method was ignored by that method, so it is dropped. One
        deprecation line says how to rewrite the entry.
        """
        old = [key for key in data if key in LEGACY_KEYS]
        if not old:
            return data
        out = {k: v for k, v in data.items() if k not in LEGACY_KEYS}
        method = str(data.get("method", "topk"))
        moved: dict[str, Any] = {}
        for key in old:
            section, name = LEGACY_KEYS[key]
            if section is None:  # target_l0: relu's or jumprelu's
                section = method if method in ("relu", "jumprelu") else None
            if section == method:
                moved[name] = data[key]
        if moved:
            current = out.get(method) or {}
            out[method] = {**moved, **current}
        new = ", ".join(f"{method}.{name}" for name in moved) or "nothing (other methods' keys)"
        warnings.warn(
            f"{where or 'saes'}: flat keys {', '.join(old)} are deprecated and will stop "
            f"loading in saekit 0.3; they were read as {new}. Write them under `{method}:`.",
            SaekitDeprecation,
            stacklevel=2,
        )
        return out


_SECTION_TYPES: dict[str, type] = {
    "relu": ReLUConfig,
    "jumprelu": JumpReLUConfig,
    "matryoshka": MatryoshkaConfig,
    "mp": MPConfig,
    "snmf": SNMFConfig,
}

LEGACY_KEYS: dict[str, tuple[str | None, str]] = {
    "target_l0": (None, "target_l0"),
    "l1_coefficient": ("relu", "l1_coefficient"),
    "l0_coefficient": ("jumprelu", "l0_coefficient"),
    "jumprelu_init_threshold": ("jumprelu", "init_threshold"),
    "jumprelu_bandwidth": ("jumprelu", "bandwidth"),
    "matryoshka_widths": ("matryoshka", "widths"),
    "mp_tied": ("mp", "tied"),
    "mp_dropout": ("mp", "dropout"),
    "mp_revival_coefficient": ("mp", "revival_coefficient"),
    **{
        f"snmf_{name}": ("snmf", name)
        for name in (
            "sparsity",
            "init",
            "max_iter",
            "patience",
            "tol",
            "stream_passes",
            "hierarchy",
        )
    },
}
"""saekit 0.1 flat key → (section, name); section None = the entry's own method (relu or
jumprelu), the two that had a target_l0."""
