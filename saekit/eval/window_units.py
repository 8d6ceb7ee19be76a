"""Per-window sums of the core evaluation: the units its intervals resample.

The core metrics are ratios of sums over held-out tokens. Keeping each sum per window (a text
of `context_size` tokens) instead of over the whole set costs [W] floats per sum and [W, D]
for the window means (W = n_windows: bounded by the settings), and makes every metric a
ratio of per-window columns (scorecard.Units), which the bootstrap resamples by window:
tokens of one text are correlated, windows are close to independent draws of text.

FVU's denominator per window is Σ_t‖x_t − x̄‖² about the mean x̄ of the whole set; summed over
windows it is exactly the total the point estimate uses, and a resample keeps x̄ fixed (the
shift of the mean under a resample changes the denominator by O(1/tokens)).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.eval.scorecard import Score, Units, score

WINDOWS = "held-out windows"

CORE_SCORES: dict[str, tuple[str, str, bool]] = {
    # name: (numerator column, denominator column, higher is better)
    "explained_variance": ("explained", "variance", True),
    "fvu": ("sq_err", "variance", False),
    "mse": ("sq_err", "n_tokens", False),
    "cosine": ("cos", "n_tokens", True),
    "l2_ratio": ("l2", "n_tokens", True),
    "ce_loss_score": ("ce_recovered", "ce_gap", True),
    "ce_increase": ("ce_excess", "n_pred", False),
    "kl_sae": ("kl", "n_pos", False),
}
"""Core scores with intervals and control margins. l2_ratio's direction is nominal (1 is
ideal); its margin is reported, but shrinkage is read from the value."""
SPARSITY_SCORES = {"l0_mean": ("l0", "n_tokens")}
"""Reported with an interval only: a control's L0 is not a bar to clear."""


def windows_key(tokens_NT: Tensor) -> str:
    """Identity of a set of windows (their tokens), so scores on them compare paired."""
    digest = hashlib.sha256(tokens_NT.cpu().to(torch.int64).numpy().tobytes()).hexdigest()
    return f"windows:{tokens_NT.shape[0]}x{tokens_NT.shape[1]}:{digest[:16]}"


class WindowSums:
    """Accumulates per-window sums for the dictionary and its controls ("variants")."""

    def __init__(self, n_windows: int, d_in: int, variants: Iterable[str]) -> None:
        self.W = n_windows
        self.variants = list(variants)
        z = lambda: np.zeros(n_windows)  # noqa: E731
        self.n_tokens, self.ss = z(), z()
        self.mean_WD = np.zeros((n_windows, d_in))
        self.cols = {v: {c: z() for c in ("sq_err", "cos", "l2", "l0")} for v in self.variants}
        lm_cols = ("n_pred", "n_pos", "ce_clean", "ce_zero", "ce_mean", "kl_zero", "kl_mean")
        self.lm = {c: z() for c in lm_cols}
        for v in self.variants:
            self.lm[f"ce_{v}"], self.lm[f"kl_{v}"] = z(), z()
        self.tokens: list[Tensor] = []

    @staticmethod
    def window_of_rows(mask_BT: Tensor, first: int) -> Tensor:
        """Window index of every masked row (the order x[mask] takes)."""
        per = mask_BT.sum(dim=1).cpu()
        return torch.arange(first, first + len(per)).repeat_interleave(per)

    def _add(self, col: np.ndarray, win_N: Tensor, values_N: Tensor) -> None:
        np.add.at(col, win_N.numpy(), values_N.detach().double().cpu().numpy())

    def add_windows(self, tokens_BT: Tensor, mask_BT: Tensor, first: int, x_ND: Tensor) -> None:
        """The activations of windows [first, first + B): counts, means, centred squares."""
        self.tokens.append(tokens_BT.cpu())
        win = self.window_of_rows(mask_BT, first)
        x = x_ND.detach().double().cpu()
        n_B = mask_BT.sum(dim=1).cpu().double()
        sums_BD = torch.zeros(len(n_B), x.shape[1], dtype=torch.float64)
        sums_BD.index_add_(0, win - first, x)
        mean_BD = sums_BD / n_B.clamp_min(1)[:, None]
        centred = (x - mean_BD[win - first]).pow(2).sum(dim=1)
        self.n_tokens[first : first + len(n_B)] = n_B.numpy()
        self.mean_WD[first : first + len(n_B)] = mean_BD.numpy()
        self._add(self.ss, win, centred)

    def add_reconstruction(
        self,
        variant: str,
        mask_BT: Tensor,
        first: int,
        x_ND: Tensor,
        x_hat_ND: Tensor,
        z_NS: Tensor,
    ) -> None:
        win = self.window_of_rows(mask_BT, first)
        x, x_hat = x_ND.detach().double(), x_hat_ND.detach().double()
        cols = self.cols[variant]
        self._add(cols["sq_err"], win, (x - x_hat).pow(2).sum(dim=1))
        self._add(cols["cos"], win, F.cosine_similarity(x, x_hat, dim=1, eps=1e-8))
        self._add(cols["l2"], win, x_hat.norm(dim=1) / x.norm(dim=1).clamp_min(1e-8))
        self._add(cols["l0"], win, (z_NS != 0).sum(dim=1).double())

    def add_lm(self, column: str, first: int, per_window_B: Tensor) -> None:
        """A sum per window of the batch (next-token losses, KLs or counts)."""
        vals = per_window_B.detach().double().cpu().numpy()
        self.lm[column][first : first + len(vals)] += vals

    # ---- units and scores ------------------------------------------------------------------------
    def variance(self) -> np.ndarray:
        """[W] Σ_t‖x_t − x̄‖² of each window about the whole set's mean."""
        total = self.n_tokens.sum()
        mean_D = (self.n_tokens[:, None] * self.mean_WD).sum(0) / max(total, 1)
        return self.ss + self.n_tokens * ((self.mean_WD - mean_D) ** 2).sum(1)

    def columns(self, variant: str) -> dict[str, np.ndarray]:
        """Every numerator and denominator column of `variant`'s scores."""
        c, lm = self.cols[variant], self.lm
        var = self.variance()
        out = {
            "variance": var,
            "explained": var - c["sq_err"],
            "n_tokens": self.n_tokens,
            **c,
            "n_pred": lm["n_pred"],
            "n_pos": lm["n_pos"],
        }
        if lm["n_pred"].sum() > 0:
            out["ce_recovered"] = lm["ce_zero"] - lm[f"ce_{variant}"]
            out["ce_gap"] = lm["ce_zero"] - lm["ce_clean"]
            out["ce_excess"] = lm[f"ce_{variant}"] - lm["ce_clean"]
            out["kl"] = lm[f"kl_{variant}"]
        return out

    def key(self) -> str:
        return windows_key(torch.cat(self.tokens)) if self.tokens else ""

    def units(self, variant: str, num: str, den: str) -> Units | None:
        cols = self.columns(variant)
        if num not in cols:
            return None
        return Units(WINDOWS, self.key(), cols[num], cols[den])

    def scores(self, main: str, seed: int = 0) -> dict[str, Score]:
        """Scores of `main` with intervals over windows, margins over the other variants."""
        out: dict[str, Score] = {}
        controls = [v for v in self.variants if v != main]
        for name, (num, den, higher) in CORE_SCORES.items():
            units = self.units(main, num, den)
            if units is None:
                continue
            ctrl = {v: u for v in controls if (u := self.units(v, num, den)) is not None}
            out[name] = score(units, ctrl, higher_is_better=higher, seed=seed)
        for name, (num, den) in SPARSITY_SCORES.items():
            units = self.units(main, num, den)
            if units is not None:
                out[name] = score(units, higher_is_better=None, seed=seed)
        return out
