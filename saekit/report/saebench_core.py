"""`saekit eval --saebench-core`: SAEBench's core eval (`sae_bench.evals.core.main.run_evals`,
sae-bench 0.6.0, the dev extra) on the same SAE, model and held-out windows as saekit's core
metrics, both numbers side by side (docs/evaluation.md lists where the conventions differ).

SAEBench reads the SAE through `sae_lens.SAE.load_from_disk` (saekit's save of a ReLU, TopK,
BatchTopK or JumpReLU dictionary) and needs a TransformerLens model; its token store here
serves exactly the windows saekit evaluated, its ignored tokens are the tokenizer's special
tokens (saekit's "ordinary tokens" convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel

PAIRS = (
    ("l0_mean", "l0"),
    ("mse", "mse"),
    ("explained_variance", "explained_variance"),
    ("cosine", "cossim"),
    ("ce_clean", "ce_loss_without_sae"),
    ("ce_sae", "ce_loss_with_sae"),
    ("ce_zero", "ce_loss_with_ablation"),
    ("ce_loss_score", "ce_loss_score"),
    ("kl_sae", "kl_div_with_sae"),
    ("kl_zero", "kl_div_with_ablation"),
)
"""(saekit's core metric, SAEBench's name for its counterpart)."""


class WindowStore:
    """What SAEBench's (and SAELens') `run_evals` asks of an ActivationsStore: these token
    windows in order, `store_batch_size_prompts` at a time, and a rewind."""

    def __init__(self, windows_NT: torch.Tensor, batch_size: int | None = None) -> None:
        self.windows_NT = windows_NT
        self.store_batch_size_prompts = batch_size or len(windows_NT)
        self.context_size = windows_NT.shape[1]
        self.next = 0

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        batch = self.windows_NT[self.next : self.next + n]
        self.next += n
        return batch

    def reset_input_dataset(self) -> None:
        self.next = 0


def saebench_core(
    model: HookedModel, sae_dir: Path, windows: Any, n_windows: int, name: str
) -> dict[str, float]:
    """SAEBench's core metrics of the SAE saved in `sae_dir` on windows [0, n_windows) of
    `windows` (saekit's TokenWindows), in batches of at most 8 windows (SAEBench holds a
    batch's logits at once); `tokens_per_batch` is its mse's divisor."""
    try:
        import sae_lens
        from sae_bench.evals.core.main import run_evals
        from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    except ImportError:
        raise SaekitError(
            "--saebench-core needs SAEBench: pip install --no-deps sae-bench==0.6.0 tabulate "
            "(`make setup` installs both)."
        ) from None
    if not model.is_transformer_lens:
        raise SaekitError("--saebench-core runs on the TransformerLens backend: --model with it.")
    try:
        sae = sae_lens.SAE.load_from_disk(str(sae_dir), device=str(model.device))
    except Exception as exc:  # noqa: BLE001 - SAELens refuses a format it does not know
        raise SaekitError(
            f"SAELens cannot load {name!r} ({type(exc).__name__}), so SAEBench cannot evaluate "
            "it; --saebench-core takes ReLU, TopK, BatchTopK and JumpReLU dictionaries."
        ) from None
    sae.cfg.metadata.model_name = sae.cfg.metadata.model_name or name
    _, sae, _ = load_and_format_sae(name, sae, str(model.device))
    n_windows = min(n_windows, len(windows))
    batch = max(b for b in range(1, min(8, n_windows) + 1) if n_windows % b == 0)
    config = core_config(batch, n_windows // batch)
    windows_NT = windows.get(0, n_windows).to(model.device)
    store = WindowStore(windows_NT, batch)
    metrics, _ = run_evals(sae, store, model.model, config, ignore_tokens=set(windows.special_ids))
    out = {k: float(v) for group in metrics.values() for k, v in group.items()}
    out["tokens_per_batch"] = float(windows.token_mask(windows_NT[:batch]).sum())
    return out


def core_config(batch_size: int, n_batches: int) -> Any:
    """SAEBench's CoreEvalConfig for `n_batches` batches of `batch_size` windows: special tokens
    left out of the splice, CE and KL on, per-feature statistics off."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig

    return CoreEvalConfig(
        batch_size_prompts=batch_size,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        exclude_special_tokens_from_reconstruction=True,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=False,
        compute_featurewise_weight_based_metrics=False,
    )


def side_by_side(ours: dict[str, Any], theirs: dict[str, float]) -> dict[str, dict[str, float]]:
    """{saekit metric: {"saekit": value, "saebench": value}} for the metrics both compute."""
    return {
        mine: {"saekit": float(ours[mine]), "saebench": theirs[key]}
        for mine, key in PAIRS
        if ours.get(mine) is not None and key in theirs
    }
