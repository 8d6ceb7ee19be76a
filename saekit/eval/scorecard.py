"""The scorecard's unit: one aggregate score with its 95% interval, its null controls and its
margin over the strongest of them.

Every aggregate in the scorecard is a ratio of sums over units (held-out windows, features,
tasks, letters, prompts): value = Σ_u num_u / Σ_u den_u. A mean over features is num = the
feature's score, den = 1; FVU is num = Σ‖x − x̂‖² of a window, den = its Σ‖x − x̄‖²; the
CE-loss score is num = CE_zero − CE_sae, den = CE_zero − CE_clean per window. Storing the two
columns per unit is enough to recompute the score on any resample, so a bootstrap is a matrix
product (weights [R, U] @ columns [U]) and `saekit eval compare` can difference two saved
scores without re-running anything.

Intervals are percentile bootstraps (1,000 resamples, seeded). Resampling windows rather
than tokens keeps the correlation between the tokens of one text inside a unit. Two scores
measured on the same units (the same held-out windows or tasks: equal `units.key`) are
compared paired, with the same resample weights on both sides; scores over different units
(the features of two dictionaries) are resampled independently.

    units = Units("features", key="", num=scores_S, den=np.ones(S))
    s = score(units, controls={"random": random_units}, higher_is_better=True)
    s.value, s.ci, s.margin, s.margin_ci, s.to_json()
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_RESAMPLES = 1000
"""Bootstrap resamples per interval: the 2.5% and 97.5% percentiles then rest on 25 values
each; their Monte-Carlo error is ~5% of the interval's width."""
LEVEL = 0.95
"""Coverage of every interval."""

HEADLINE: dict[str, tuple[str, ...]] = {
    "core": ("explained_variance", "ce_loss_score", "kl_sae", "l0_mean"),
    "sparse_probing": ("accuracy_k1", "accuracy_k5"),
    "interpretability": (
        "simulation",
        "detection",
        "fuzzing",
        "embedding_detection",
        "embedding_fuzzing",
    ),
}
"""Scores printed (and shown in the README table) per section, the one that separates learned
features from the controls on SmolLM2 first (docs/interpretability.md); other sections print
all of theirs. report.json keeps every score."""


@dataclass(frozen=True)
class Units:
    """Per-unit numerators and denominators of one measurement: what a bootstrap resamples."""

    kind: str
    """What a unit is, as shown next to the interval: 'held-out windows', 'features', ..."""
    key: str
    """Identity of the unit set ('' = private to this measurement). Equal keys mean the same
    units in the same order (e.g. the same held-out windows), so differences are paired."""
    num: np.ndarray
    """[U] numerator of each unit."""
    den: np.ndarray
    """[U] denominator of each unit (1 for a plain mean)."""

    def __post_init__(self) -> None:
        num, den = np.asarray(self.num, np.float64), np.asarray(self.den, np.float64)
        if num.shape != den.shape or num.ndim != 1:
            raise ValueError(f"num {num.shape} and den {den.shape} must be equal 1-d shapes")
        object.__setattr__(self, "num", num)
        object.__setattr__(self, "den", den)

    @classmethod
    def mean_of(cls, values: Any, kind: str, key: str = "") -> Units:
        """Units whose score is the plain mean of `values` (NaN/None values dropped)."""
        arr = np.array([np.nan if v is None else v for v in values], np.float64)
        arr = arr[np.isfinite(arr)]
        return cls(kind, key, arr, np.ones_like(arr))

    def __len__(self) -> int:
        return len(self.num)

    @property
    def value(self) -> float:
        den = self.den.sum()
        return float(self.num.sum() / den) if len(self) and den != 0 else float("nan")

    def resampled(self, weights_RU: np.ndarray) -> np.ndarray:
        """The statistic under each row of bootstrap weights ([R])."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (weights_RU @ self.num) / (weights_RU @ self.den)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "num": [float(f"{v:.7g}") for v in self.num],
            "den": [float(f"{v:.7g}") for v in self.den],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Units:
        return cls(data["kind"], data["key"], np.array(data["num"]), np.array(data["den"]))


def bootstrap_weights(n_units: int, seed: int, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """[R, U] multinomial counts: each row draws U units with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_resamples).astype(
        np.float64
    )


def interval(samples_R: np.ndarray) -> tuple[float, float]:
    """Central percentile interval at LEVEL, ignoring resamples where the ratio is undefined."""
    ok = samples_R[np.isfinite(samples_R)]
    if not len(ok):
        return (float("nan"), float("nan"))
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(ok, [tail, 100 - tail])
    return (float(lo), float(hi))


def p_value(diff_R: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is 0": twice the smaller tail mass."""
    ok = diff_R[np.isfinite(diff_R)]
    if not len(ok):
        return float("nan")
    below, above = (ok <= 0).mean(), (ok >= 0).mean()
    return float(min(1.0, 2 * min(below, above)))


def resample_pair(a: Units, b: Units, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap samples of a and b: paired (shared weights) when they share non-empty units."""
    wa = bootstrap_weights(len(a), seed)
    if a.key and a.key == b.key and len(a) == len(b):
        return a.resampled(wa), b.resampled(wa)
    return a.resampled(wa), b.resampled(bootstrap_weights(len(b), seed + 1))


@dataclass(frozen=True)
class Score:
    """One aggregate score of a dictionary: value, 95% CI, controls and margin."""

    value: float
    """The score on all units."""
    ci: tuple[float, float]
    """95% percentile-bootstrap interval of `value`."""
    units: Units
    """What was resampled, with the per-unit columns (so comparisons need no re-run)."""
    higher_is_better: bool | None = True
    """Direction of the score (FVU, KL and CE loss: lower is better; None: neither, as L0)."""
    controls: dict[str, float] = field(default_factory=dict)
    """The same score for each null control: 'random' (random directions with the
    dictionary's norms), 'init' (the untrained dictionary), or others an evaluator defines."""
    margin: float | None = None
    """Improvement over the strongest control (> 0: better than every control)."""
    margin_ci: tuple[float, float] | None = None
    """95% interval of the margin (paired when the control shares the units)."""
    strongest_control: str | None = None
    """The control the margin is taken against."""

    @property
    def resampled(self) -> str:
        """What the interval resamples, e.g. '64 held-out windows'."""
        return f"{len(self.units)} {self.units.kind}"

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ci": list(self.ci),
            "resampled": self.resampled,
            "higher_is_better": self.higher_is_better,
            "controls": dict(self.controls),
            "margin": self.margin,
            "margin_ci": list(self.margin_ci) if self.margin_ci is not None else None,
            "strongest_control": self.strongest_control,
            "units": self.units.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Score:
        margin_ci = data.get("margin_ci")
        return cls(
            value=float(data["value"]),
            ci=(float(data["ci"][0]), float(data["ci"][1])),
            units=Units.from_json(data["units"]),
            higher_is_better=data.get("higher_is_better", True),
            controls={k: float(v) for k, v in data.get("controls", {}).items()},
            margin=data.get("margin"),
            margin_ci=(float(margin_ci[0]), float(margin_ci[1])) if margin_ci else None,
            strongest_control=data.get("strongest_control"),
        )


def score(
    units: Units,
    controls: Mapping[str, Units] | None = None,
    higher_is_better: bool | None = True,
    seed: int = 0,
) -> Score:
    """The score of `units` with its interval, and its margin over the strongest control.

    The strongest control is the one with the best value in the score's direction; the
    margin is sign-adjusted so that > 0 always means "better than that control". A score
    with no direction (higher_is_better=None) gets no margin.
    """
    sign = 1.0 if higher_is_better else -1.0
    samples = units.resampled(bootstrap_weights(len(units), seed)) if len(units) else np.array([])
    ctrl = {name: u.value for name, u in (controls or {}).items() if len(u)}
    out = Score(units.value, interval(samples), units, higher_is_better, ctrl)
    finite = {n: v for n, v in ctrl.items() if np.isfinite(v)}
    if not finite or not len(units) or higher_is_better is None:
        return out
    best = max(finite, key=lambda n: sign * finite[n])
    assert controls is not None
    mine, theirs = resample_pair(units, controls[best], seed)
    return Score(
        out.value,
        out.ci,
        units,
        higher_is_better,
        ctrl,
        margin=sign * (units.value - finite[best]),
        margin_ci=interval(sign * (mine - theirs)),
        strongest_control=best,
    )


@dataclass(frozen=True)
class Difference:
    """a − b of one score of two dictionaries, with its interval and p-value."""

    value: float
    ci: tuple[float, float]
    p: float
    """Two-sided bootstrap p-value of "no difference"."""
    paired: bool
    """Whether both were measured on the same units (shared resample weights)."""


def difference(a: Units, b: Units, seed: int = 0) -> Difference:
    """a − b, paired over shared units (same held-out windows, tasks), else independent."""
    sa, sb = resample_pair(a, b, seed)
    diff = sa - sb
    paired = bool(a.key) and a.key == b.key and len(a) == len(b)
    return Difference(a.value - b.value, interval(diff), p_value(diff), paired)


def holm(p_values: list[float], alpha: float = 1 - LEVEL) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    reject = [False] * len(p_values)
    for rank, i in enumerate(order):
        if not p_values[i] <= alpha / (len(p_values) - rank):
            break
        reject[i] = True
    return reject


MIN_UNITS = 8
"""Fewer resampled units than this (2 probing tasks, a light steering run's 2 features) make
a bootstrap interval degenerate: such margins and differences are shown but never called
significant."""


def beats_controls(margin_ci: tuple[float, float] | None, n_units: int) -> str:
    """'yes' when the margin's interval lies above 0, 'no' below, '~' when it straddles 0;
    'few' when the interval rests on fewer than MIN_UNITS units."""
    if margin_ci is None or not np.isfinite(margin_ci[0]):
        return ""
    if n_units < MIN_UNITS:
        return "few"
    return "yes" if margin_ci[0] > 0 else "no" if margin_ci[1] < 0 else "~"
