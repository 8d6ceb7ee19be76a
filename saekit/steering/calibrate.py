"""Strength calibration: find α with a given next-token KL (docs/steering.md, step 1 of the
steering score).

KL(p_0 ‖ p_α) at the last position of the selection prompts, averaged over prompts, grows with
|α| for small α (it is 0 at α = 0 and its derivative in α is 0 there too, so KL ≈ c·α² near 0).
Each target κ is a root-finding problem on the bracket [0, α_max]: the first evaluation is at
α_max (a target it does not reach is recorded as unreached, never dropped; the SNMF scripts
drop such rows silently, which biases per-κ averages toward easy features), then each step
interpolates log KL linearly in log α inside the bracket (exact for KL ∝ α^n), falling back
to bisection whenever the previous step failed to halve the bracket. It stops once the KL is
within `rel_tol`·κ: 3-5 evaluations per target where plain bisection needs ~8.

`calibrate_many` steps many problems in lockstep, so one batched forward evaluates every
direction's next candidate; `calibrate` is the one-direction form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from saekit.errors import SaekitError


@dataclass(frozen=True)
class Calibration:
    """The strength found for one KL target."""

    kappa: float
    """Target KL (nats)."""
    alpha: float
    """Signed strength whose KL is closest to κ (α_max·sign when unreached)."""
    kl: float
    """Mean KL measured at `alpha`."""
    reached: bool
    """Whether |KL − κ| ≤ rel_tol·κ was achieved."""


@dataclass
class _Bracket:
    kappa: float
    lo: float = 0.0
    kl_lo: float = 0.0
    hi: float = 0.0
    kl_hi: float = 0.0
    best: float = 0.0
    kl_best: float = math.inf
    bisect: bool = False
    done: bool = False

    def propose(self) -> float:
        width = self.hi - self.lo
        if self.bisect:
            return self.lo + 0.5 * width
        if self.kl_lo > 0:
            t = math.log(self.kappa / self.kl_lo) / math.log(self.kl_hi / self.kl_lo)
            alpha = self.lo * (self.hi / self.lo) ** t
        else:  # lo = 0: KL ≈ c·α² from the upper end
            alpha = self.hi * math.sqrt(self.kappa / self.kl_hi)
        # Keep the candidate strictly inside the bracket so every step shrinks it.
        return min(max(alpha, self.lo + 0.02 * width), self.hi - 0.02 * width)

    def update(self, alpha: float, kl: float, tol: float) -> None:
        if abs(kl - self.kappa) < abs(self.kl_best - self.kappa):
            self.best, self.kl_best = alpha, kl
        if abs(kl - self.kappa) <= tol:
            self.done = True
            return
        width = self.hi - self.lo
        if kl < self.kappa:
            self.lo, self.kl_lo = alpha, kl
        else:
            self.hi, self.kl_hi = alpha, kl
        self.bisect = self.hi - self.lo > 0.5 * width


def calibrate_many(
    kl_many: Callable[[list[int], list[float]], list[float]],
    kappas: Sequence[float],
    alpha_max: float,
    signs: Sequence[float] | None = None,
    rel_tol: float = 0.05,
    max_steps: int = 24,
) -> list[Calibration]:
    """One Calibration per problem k (target kappas[k], sign signs[k], default +1).

    `kl_many(ks, alphas)` returns the mean KL of problem ks[i]'s direction at the signed
    strength alphas[i], for all i at once; it is called at most `max_steps` times.
    """
    signs = [1.0] * len(kappas) if signs is None else list(signs)
    if not alpha_max > 0:
        raise SaekitError(f"alpha_max must be > 0, got {alpha_max}.")
    if any(s not in (1.0, -1.0) for s in signs) or len(signs) != len(kappas):
        raise SaekitError(f"Give one sign, +1 or -1, per KL target; got {signs}.")
    if any(not k > 0 for k in kappas):
        raise SaekitError(f"KL targets must be > 0, got {list(kappas)}.")
    brackets = [_Bracket(float(k), hi=alpha_max) for k in kappas]
    ks = list(range(len(brackets)))
    top = kl_many(ks, [s * alpha_max for s in signs])
    for b, kl in zip(brackets, top):
        b.kl_hi = b.kl_best = kl
        b.best = alpha_max
        # Unreached: even α_max stays below κ; reached at α_max: within the tolerance.
        b.done = kl < b.kappa * (1 - rel_tol) or abs(kl - b.kappa) <= rel_tol * b.kappa
    for _ in range(max_steps - 1):
        active = [k for k in ks if not brackets[k].done]
        if not active:
            break
        alphas = [brackets[k].propose() for k in active]
        kls = kl_many(active, [signs[k] * a for k, a in zip(active, alphas)])
        for k, a, kl in zip(active, alphas, kls):
            brackets[k].update(a, kl, rel_tol * brackets[k].kappa)
    return [
        Calibration(b.kappa, s * b.best, b.kl_best, abs(b.kl_best - b.kappa) <= rel_tol * b.kappa)
        for b, s in zip(brackets, signs)
    ]


def calibrate(
    kl_at: Callable[[float], float],
    kappas: Sequence[float],
    alpha_max: float,
    sign: float = 1.0,
    rel_tol: float = 0.05,
    max_steps: int = 24,
) -> list[Calibration]:
    """One Calibration per κ (ascending) with α = sign·|α|, |α| ∈ (0, alpha_max]."""
    ordered = sorted(kappas)
    seen: dict[float, float] = {}

    def kl_many(_ks: list[int], alphas: list[float]) -> list[float]:
        for a in alphas:
            if a not in seen:
                seen[a] = float(kl_at(a))
        return [seen[a] for a in alphas]

    return calibrate_many(kl_many, ordered, alpha_max, [sign] * len(ordered), rel_tol, max_steps)
