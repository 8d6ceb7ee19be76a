"""Dictionaries fitted in closed form (SNMF) instead of trained by gradient steps.

A recipe whose dictionaries are all fitted runs `FitRun`, which has the Trainer's
`train(resume) -> summary` shape and writes the same run directory (saes/NAME/, and
history.jsonl with each fit's loss and FVU per iteration or pass). Each dictionary reads the
first `train.total_tokens` rows of its hook: `FitData.matrix()` holds them as one D × N float32
matrix (built once per hook and shared), `FitData.passes()` replays them batch by batch from
the stream's start (restoring its state dict). On a live stream every pass re-runs the model,
so for many passes write a `saekit cache` first. Fits are deterministic, so `--resume` simply
fits again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from saekit.activations.stream import BaseStream
from saekit.dictionaries import Dictionary, FitData, FittedDictionary, SAEConfig
from saekit.dictionaries.registry import dictionary_class
from saekit.errors import SaekitError
from saekit.rundir import RunDir
from saekit.train.config import TrainConfig
from saekit.train.logging import RunLogger
from saekit.train.slot import resolve_hook, slot_name
from saekit.train.trainer import export_dictionary


class FitRun:
    """Fits every dictionary of a recipe on the first `total_tokens` stream rows."""

    def __init__(
        self,
        sae_cfgs: tuple[SAEConfig, ...],
        cfg: TrainConfig,
        stream: BaseStream,
        provenance: dict[str, Any] | None = None,
        run_dir: RunDir | None = None,
    ) -> None:
        self.cfg, self.stream, self.provenance = cfg, stream, provenance or {}
        self.run_dir = run_dir
        self.slots: list[tuple[str, SAEConfig, type[FittedDictionary]]] = []
        for i, sae_cfg in enumerate(sae_cfgs):
            cls = dictionary_class(sae_cfg.method)
            if not issubclass(cls, FittedDictionary):
                raise SaekitError(
                    f"saes[{i}]: method {sae_cfg.method} is trained by gradient steps; a "
                    "recipe mixing it with fitted dictionaries (snmf) cannot run in one pass. "
                    "Train them in separate recipes."
                )
            hook = resolve_hook(i, sae_cfg, stream)
            cls.check(sae_cfg, cfg.total_tokens)
            sae_cfg = replace(sae_cfg, hook=hook)
            self.slots.append((slot_name(i, sae_cfg, hook), sae_cfg, cls))
        self._start = stream.state_dict()
        self._matrices: dict[str, Tensor] = {}
        self.history: list[dict[str, float]] = []
        self.dictionaries: dict[str, Dictionary] = {}

    def _batches(self, hook: str) -> Iterator[Tensor]:
        """The first total_tokens rows of `hook`, replayed from the stream's start."""
        self.stream.load_state_dict(self._start)
        left = self.cfg.total_tokens
        while left > 0:
            x_BD = self.stream.next_batch()[hook]
            take = min(left, x_BD.shape[0])
            yield x_BD[:take]
            left -= take

    def _matrix(self, hook: str) -> Tensor:
        """One D × N float32 matrix per hook, filled column block by column block."""
        if hook not in self._matrices:
            A_DN = torch.empty(self.stream.d_in[hook], self.cfg.total_tokens)
            col = 0
            for x_BD in self._batches(hook):
                A_DN[:, col : col + x_BD.shape[0]] = x_BD.T
                col += x_BD.shape[0]
            self._matrices[hook] = A_DN
        return self._matrices[hook]

    def data(self, hook: str) -> FitData:
        return FitData(
            self.stream.d_in[hook],
            self.cfg.total_tokens,
            lambda: self._matrix(hook),
            lambda: self._batches(hook),
        )

    def train(self, resume: bool = False) -> dict[str, Any]:
        del resume  # deterministic closed-form fits: a resumed run fits again
        run_dir = self.run_dir
        logger = RunLogger(run_dir, replace(self.cfg, wandb_mode="disabled"), {}, resume=False)
        summary: dict[str, Any] = {"steps": 0, "tokens": self.cfg.total_tokens, "saes": {}}
        for name, c, cls in self.slots:
            fit = cls.fit(c, self.data(c.hook))
            for step, loss in enumerate(fit.losses, start=1):
                fvu = loss / max(fit.fvu_scale, 1e-30)
                logger.log(step, {f"{name}/loss/total": loss, f"{name}/fvu": fvu})
            summary["steps"] = max(summary["steps"], len(fit.losses))
            provenance = {**self.provenance, "training_tokens": self.cfg.total_tokens, **fit.facts}
            if run_dir is not None:
                provenance["run_dir"] = str(run_dir.path)
            path = run_dir.sae_dir(name) if run_dir is not None else None
            norm = self.stream.norm_factors.get(c.hook)
            exported = export_dictionary(fit.dictionary, path, c.hook, norm, provenance)
            summary["saes"][name] = {**exported, **fit.facts}
            self.dictionaries[name] = fit.dictionary
        self.history = logger.records
        self._matrices.clear()
        return summary
