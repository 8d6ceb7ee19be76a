"""The judge-free steering protocol at one hook (docs/steering.md): calibrate, then measure.

`SiteStudy` holds what every direction at one hook shares: the neutral prompts (split into a
selection half P_sel and an evaluation half P_eval), the unsteered baseline and the target
token sets of every direction studied together. Work is batched over directions: one forward
steers many (direction, prompt) rows, each with its own vector and strength. `calibrate_all`
finds every direction's strength for every KL budget (and sign) in lockstep; `measure_all`
runs each (direction, α): next-token log-probabilities on all prompts, and with `full` a
continuation per prompt with its NLL under the unsteered model and the reference CE. Every
target set is scored from the same rows, so random directions (the null) and other features
(specificity) cost no extra forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from tqdm import tqdm

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.steering.calibrate import Calibration, calibrate_many
from saekit.steering.directions import Direction
from saekit.steering.generate import (
    Prefix,
    continuation_nll,
    encode_prompts,
    generate,
    last_logprobs,
    window_ce,
)
from saekit.steering.interventions import RowDirections
from saekit.steering.metrics import concept_mass, hit_at, kl_last, rep3, target_rate

DEFAULT_PROMPTS = (
    "I think that",
    "The weather today",
    "My favourite thing is",
    "Yesterday I went to",
    "The best way to",
    "She told me that",
    "In the morning",
    "Here is a short story:",
    "One day, a man",
    "It is important to",
    "The city was",
    "When I was young",
    "Let me tell you about",
    "The most interesting",
    "After dinner we",
    "There was a time",
    "We talked about",
    "He looked at the",
    "Last week, my friend",
    "The reason is",
    "Everyone knows that",
    "On the way home",
    "This is a story about",
    "I would like to",
    "At the end of the day",
    "They decided to",
    "You should never",
    "The first thing",
    "It was late when",
    "My neighbour said",
    "In my opinion,",
    "Before we begin,",
)
"""Neutral stems written for steering (no text that chooses features or targets contains
them); even indices form the selection split, odd ones the evaluation split."""


@dataclass(frozen=True)
class SteeringConfig:
    """The steering score protocol (docs/steering.md, "The steering score")."""

    kl_targets: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5)
    """Next-token KL budgets κ (nats) the strength is calibrated to."""
    targets: Literal["vocab", "maxact"] = "vocab"
    """Target tokens: vocabulary projection (output-centric) or top mean activation (input)."""
    target_tokens: int = 20
    """Size k of each direction's target token set."""
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    """Neutral prompts; even indices select the strength, odd ones report the score."""
    gen_tokens: int = 32
    """Tokens generated per prompt for the generated-concept rate and fluency."""
    select_kappa: bool = True
    """Also generate on the selection prompts and pick each direction's κ* by S there. False:
    continuations on the evaluation prompts only (half the generation, which dominates the
    cost); every budget is still reported, with no selected-κ row."""
    temperature: float = 0.0
    """0 = greedy continuations; > 0 = seeded sampling."""
    n_random: int = 8
    """Random directions at the same hook and KL: the null distribution of each score."""
    alpha_max_multiple: float = 8.0
    """Upper end of the strength search: this many times the median activation norm."""
    rel_tol: float = 0.05
    """A KL target counts as reached within rel_tol·κ."""
    max_bisection_steps: int = 24
    """KL evaluations per target at most."""
    reference_windows: int = 8
    """Held-out 64-token windows for ΔCE_ref (collateral damage on ordinary text; 0 = skip)."""
    sign_flip: bool = True
    """Also measure −α at every KL budget (a control: it should not produce the concept)."""
    n_boot: int = 2000
    """Bootstrap resamples behind every 95% interval (stats.py)."""
    seed: int = 0
    """Seed of the random directions, of sampling and of the bootstrap."""

    def __post_init__(self) -> None:
        if len(self.prompts) < 2:
            raise SaekitError("Give at least 2 prompts: one to select the strength, one to report.")
        if not self.kl_targets or min(self.kl_targets) <= 0:
            raise SaekitError(f"kl_targets must be positive numbers, got {self.kl_targets}.")
        if self.target_tokens < 1 or self.gen_tokens < 1 or self.n_random < 0:
            raise SaekitError("target_tokens and gen_tokens must be ≥ 1 and n_random ≥ 0.")
        if self.n_boot < 100:
            raise SaekitError(f"n_boot must be ≥ 100 for a 95% interval, got {self.n_boot}.")


@dataclass
class Setting:
    """Measurements of one direction at one strength, over all prompts and target sets."""

    calibration: Calibration
    mass_PN: Tensor
    """log Σ_{t∈T_n} p(t) at the last prompt position, per prompt and target set."""
    hit_PN: Tensor
    raised: list[int]
    """The target_tokens tokens whose log-probability rises most (mean over P_eval)."""
    rate_PN: Tensor | None = None
    """Fraction of generated tokens in each target set (None: not generated; NaN rows:
    prompts left without a continuation, the selection split when select_kappa is off)."""
    nll_P: Tensor | None = None
    """NLL of the steered continuation under the unsteered model."""
    rep3_P: Tensor | None = None
    ce_ref: float | None = None
    samples: list[tuple[str, str]] = field(default_factory=list)
    """(prompt, continuation) for each evaluation prompt."""


ITEMS_PER_BATCH = 8
"""(direction, α) settings measured together: 8 × 32 prompts = 256 rows per generation."""


class SiteStudy:
    """Baseline and shared state for steering several directions at one hook."""

    def __init__(
        self,
        model: HookedModel,
        hook: str,
        directions: Sequence[Direction],
        cfg: SteeringConfig,
        reference_BT: Tensor | None = None,
    ) -> None:
        self.model, self.hook, self.cfg = model, hook, cfg
        self.directions = list(directions)
        if any(d.hook != hook for d in self.directions):
            raise SaekitError(f"Every direction of a site study must live at {hook!r}.")
        self.prompts = encode_prompts(model, cfg.prompts)
        self.sel = list(range(0, len(self.prompts), 2))
        self.eval = list(range(1, len(self.prompts), 2))
        self.targets_N = [torch.tensor(d.targets, dtype=torch.long) for d in self.directions]
        self.reference_BT = reference_BT
        width = model.width(hook)
        for d in self.directions:
            if d.vector_D.shape[0] != width:
                raise SaekitError(
                    f"Direction {d.name} has width {d.vector_D.shape[0]} but {hook} has width "
                    f"{width}; steer at the hook the direction was learned at."
                )
        self.prefix = Prefix(model, [hook])
        # Norms, next-token log-probs, continuations: the unsteered baseline every score needs.
        with tqdm(total=3, desc=f"baseline {hook}", unit="stage") as bar:
            self.alpha_max = cfg.alpha_max_multiple * self._median_norm()
            bar.update(1)
            self.base_logp_PV = last_logprobs(model, self.prompts, None, self.prefix)
            bar.update(1)
            self.base = self._settings([], full=True, base=True)[0]
            bar.update(1)

    def _median_norm(self) -> float:
        norms = []
        for ids in self.prompts:
            acts_TD = self.model.capture(torch.tensor([ids], device=self.model.device), [self.hook])
            norms.append(acts_TD[self.hook][0, 1:].float().norm(dim=-1).cpu())  # BOS left out
        flat = torch.cat(norms)
        if flat.numel() == 0:
            raise SaekitError("Prompts are too short to measure activation norms; lengthen them.")
        return float(flat.median())

    def _edit(self, items: Sequence[tuple[int, float]], n_rows: int) -> dict[str, RowDirections]:
        """Row r = item r // n_rows: direction index and signed strength per item."""
        v_SD = torch.stack([self.directions[i].vector_D for i, _ in items])
        a_S = torch.tensor([a for _, a in items])
        return {
            self.hook: RowDirections(
                v_SD.repeat_interleave(n_rows, 0), a_S.repeat_interleave(n_rows, 0)
            )
        }

    def kl_sel(self, direction: Direction, alpha: float) -> float:
        """Mean next-token KL(p_0 ‖ p_α) over the selection prompts."""
        return self.kl_many([(self.directions.index(direction), alpha)])[0]

    def kl_many(self, items: Sequence[tuple[int, float]]) -> list[float]:
        """Mean selection-prompt KL for each (direction index, signed α), batched."""
        seqs = [self.prompts[i] for i in self.sel]
        unique = list(dict.fromkeys(items))
        found: dict[tuple[int, float], float] = {}
        for start in range(0, len(unique), 4 * ITEMS_PER_BATCH):
            part = unique[start : start + 4 * ITEMS_PER_BATCH]
            logp_RV = last_logprobs(
                self.model, seqs * len(part), self._edit(part, len(seqs)), self.prefix
            )
            base_RV = self.base_logp_PV[self.sel].repeat(len(part), 1)
            kl_IP = kl_last(base_RV, logp_RV).reshape(len(part), len(seqs))
            found.update(zip(part, kl_IP.mean(dim=1).tolist()))
        return [found[it] for it in items]

    def calibrate(
        self, direction: Direction, kappas: Sequence[float], sign: float = 1.0
    ) -> list[Calibration]:
        n = self.directions.index(direction)
        return self.calibrate_all([(n, sign)], sorted(kappas))[n, sign]

    def calibrate_all(
        self, pairs: Sequence[tuple[int, float]], kappas: Sequence[float]
    ) -> dict[tuple[int, float], list[Calibration]]:
        """{(direction index, sign): one Calibration per κ}, all problems in lockstep."""
        problems = [(n, s, k) for n, s in pairs for k in kappas]
        bar = tqdm(total=self.cfg.max_bisection_steps, desc=f"calibrating {self.hook}", unit="step")

        def kl_many(ks: list[int], alphas: list[float]) -> list[float]:
            bar.set_postfix(targets=len(ks))
            out = self.kl_many([(problems[k][0], a) for k, a in zip(ks, alphas)])
            bar.update(1)
            return out

        cals = calibrate_many(
            kl_many,
            [k for _, _, k in problems],
            self.alpha_max,
            [s for _, s, _ in problems],
            self.cfg.rel_tol,
            self.cfg.max_bisection_steps,
        )
        bar.close()
        out: dict[tuple[int, float], list[Calibration]] = {}
        for (n, s, _), cal in zip(problems, cals):
            out.setdefault((n, s), []).append(cal)
        return out

    def measure(self, direction: Direction, calibration: Calibration) -> Setting:
        return self.measure_all([(self.directions.index(direction), calibration)])[0]

    def measure_all(
        self, items: Sequence[tuple[int, Calibration]], full: bool = True, desc: str = ""
    ) -> list[Setting]:
        """One Setting per (direction index, calibration); `full` adds generation and ΔCE."""
        out: list[Setting] = []
        bar = tqdm(total=len(items), desc=desc or f"measuring {self.hook}", unit="setting")
        for start in range(0, len(items), ITEMS_PER_BATCH):
            part = list(items[start : start + ITEMS_PER_BATCH])
            out += self._settings(part, full)
            bar.update(len(part))
        bar.close()
        return out

    def _settings(
        self, items: list[tuple[int, Calibration]], full: bool, base: bool = False
    ) -> list[Setting]:
        cfg, model, P = self.cfg, self.model, len(self.prompts)
        cals = [Calibration(0.0, 0.0, 0.0, True)] if base else [c for _, c in items]
        edit = None if base else self._edit([(n, c.alpha) for n, c in items], P)
        seqs = self.prompts * len(cals)
        logp_RV = self.base_logp_PV if base else last_logprobs(model, seqs, edit, self.prefix)
        settings = []
        for i, cal in enumerate(cals):
            logp_PV = logp_RV[i * P : (i + 1) * P]
            gain_V = (logp_PV[self.eval] - self.base_logp_PV[self.eval]).mean(dim=0)
            settings.append(
                Setting(
                    calibration=cal,
                    mass_PN=torch.stack([concept_mass(logp_PV, t) for t in self.targets_N], 1)
                    if self.targets_N
                    else torch.zeros(P, 0),
                    hit_PN=torch.stack([hit_at(logp_PV, t, 10) for t in self.targets_N], 1)
                    if self.targets_N
                    else torch.zeros(P, 0),
                    raised=gain_V.topk(cfg.target_tokens).indices.tolist(),
                )
            )
        if not full:
            return settings
        rows = list(range(P)) if cfg.select_kappa else self.eval
        G = len(rows)
        gen_seqs = [self.prompts[j] for j in rows] * len(cals)
        if not base and G != P:
            edit = self._edit([(n, c.alpha) for n, c in items], G)
        conts = generate(model, gen_seqs, cfg.gen_tokens, edit, cfg.temperature, cfg.seed)
        nll_R = continuation_nll(model, gen_seqs, conts)  # the unsteered model judges fluency
        ce_I = self._reference_ce([(n, c.alpha) for n, c in items], base)
        sets = [set(t.tolist()) for t in self.targets_N]
        tok = model.tokenizer
        for i, s in enumerate(settings):
            # Prompts left without a continuation (the selection split when select_kappa is
            # off) hold NaN, so reading them by mistake cannot pass for a measurement.
            mine = dict(zip(rows, conts[i * G : (i + 1) * G]))
            s.nll_P = torch.full((P,), torch.nan)
            s.nll_P[rows] = nll_R[i * G : (i + 1) * G]
            s.rep3_P = torch.full((P,), torch.nan)
            s.rep3_P[rows] = torch.tensor([rep3(mine[j]) for j in rows])
            s.rate_PN = torch.full((P, len(sets)), torch.nan)
            s.rate_PN[rows] = torch.tensor(
                [[target_rate(mine[j], t) for t in sets] for j in rows]
            ).reshape(G, len(sets))
            s.ce_ref = None if ce_I is None else float(ce_I[i])
            s.samples = [(cfg.prompts[j], str(tok.decode(mine[j]))) for j in self.eval]
        return settings

    def _reference_ce(self, items: list[tuple[int, float]], base: bool) -> Tensor | None:
        """Mean CE on the reference windows per item, with that item's steering active."""
        if self.reference_BT is None or self.cfg.reference_windows <= 0:
            return None
        windows_WT = self.reference_BT[: self.cfg.reference_windows]
        W = windows_WT.shape[0]
        if base:
            return window_ce(self.model, windows_WT, None, self.prefix).mean()[None]
        ce_R = window_ce(
            self.model, windows_WT.repeat(len(items), 1), self._edit(items, W), self.prefix
        )
        return ce_R.reshape(len(items), W).mean(dim=1)
