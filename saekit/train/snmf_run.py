"""`saekit train` for SNMF recipes: closed-form fits instead of gradient steps.

`train_recipe` hands a recipe whose dictionaries are all `method: snmf` to `SNMFRun`, which has
the Trainer's `train(resume) -> summary` shape and writes the same run directory:

    saes/NAME/      cfg.json + sae_weights.safetensors (architecture "saekit-snmf")
    history.jsonl   loss and FVU per iteration (full batch) or per pass (streaming)

Tokens: the first `train.total_tokens` rows of the stream. With snmf_stream_passes = 0 they
are held as one D × N float32 matrix per hook (N·D·4 bytes: 32k tokens of d_mlp 1536 = 200 MB)
and fitted by `fit_snmf`; otherwise each pass replays the stream from its start (restoring
its state dict) and `fit_snmf_stream` holds one batch at a time. On a live stream every pass
re-runs the model, so for many passes write a `saekit cache` first. Fits are deterministic,
so `--resume` simply fits again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.activations.stream import BaseStream
from saekit.dictionaries import SAEConfig
from saekit.dictionaries.snmf import snmf_from_fit
from saekit.dictionaries.snmf_fit import SNMFFit, fit_snmf
from saekit.dictionaries.snmf_stream import fit_snmf_stream
from saekit.errors import SaekitError
from saekit.train.trainer import TrainConfig, export_dictionary, resolve_hook, slot_name


class SNMFRun:
    """Fits every SNMF dictionary of a recipe on the first `total_tokens` stream rows."""

    def __init__(
        self,
        sae_cfgs: tuple[SAEConfig, ...],
        cfg: TrainConfig,
        stream: BaseStream,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.stream, self.provenance = cfg, stream, provenance or {}
        self.out = Path(cfg.output_dir)
        self.slots: list[tuple[str, SAEConfig]] = []
        for i, sae_cfg in enumerate(sae_cfgs):
            hook = resolve_hook(i, sae_cfg, stream)
            if sae_cfg.d_sae > cfg.total_tokens:
                raise SaekitError(
                    f"saes[{i}]: d_sae={sae_cfg.d_sae} features need more than "
                    f"train.total_tokens={cfg.total_tokens} tokens."
                )
            sae_cfg = replace(sae_cfg, hook=hook)
            self.slots.append((slot_name(i, sae_cfg, hook), sae_cfg))
        self._start = stream.state_dict()

    def _batches(self, hooks: list[str]) -> Iterator[dict[str, Tensor]]:
        """The first total_tokens rows of `hooks`, replayed from the stream's start."""
        self.stream.load_state_dict(self._start)
        left = self.cfg.total_tokens
        while left > 0:
            batch = self.stream.next_batch()
            take = min(left, next(iter(batch.values())).shape[0])
            yield {h: batch[h][:take] for h in hooks}
            left -= take

    def _in_memory(self, hooks: list[str]) -> dict[str, Tensor]:
        """One D × N float32 matrix per hook, filled column block by column block."""
        N = self.cfg.total_tokens
        A = {h: torch.empty(self.stream.d_in[h], N) for h in hooks}
        col = 0
        for batch in self._batches(hooks):
            n = next(iter(batch.values())).shape[0]
            for h in hooks:
                A[h][:, col : col + n] = batch[h].T
            col += n
        return A

    def train(self, resume: bool = False) -> dict[str, Any]:
        del resume  # deterministic closed-form fits: a resumed run fits again
        self.out.mkdir(parents=True, exist_ok=True)
        full_hooks = sorted({c.hook for _, c in self.slots if c.snmf_stream_passes == 0})
        A = self._in_memory(full_hooks) if full_hooks else {}
        history = self.out / "history.jsonl"
        history.unlink(missing_ok=True)
        summary: dict[str, Any] = {"steps": 0, "tokens": self.cfg.total_tokens, "saes": {}}
        for name, c in self.slots:
            fit = self._fit(c, A[c.hook] if c.snmf_stream_passes == 0 else None)
            _log(history, name, fit)
            summary["steps"] = max(summary["steps"], len(fit.losses))
            summary["saes"][name] = self._export(name, c, fit)
        return summary

    def _fit(self, c: SAEConfig, A_DN: Tensor | None) -> SNMFFit:
        if A_DN is not None:
            return fit_snmf(
                A_DN,
                c.d_sae,
                sparsity=c.snmf_sparsity,
                max_iter=c.snmf_max_iter,
                patience=c.snmf_patience,
                tol=c.snmf_tol,
                init=c.snmf_init,
                seed=c.seed,
                progress=True,
            )
        return fit_snmf_stream(
            lambda: (batch[c.hook] for batch in self._batches([c.hook])),
            c.d_sae,
            sparsity=c.snmf_sparsity,
            max_passes=c.snmf_stream_passes,
            tol=c.snmf_tol,
            init=c.snmf_init,
            seed=c.seed,
            progress=True,
        )

    def _export(self, name: str, c: SAEConfig, fit: SNMFFit) -> dict[str, Any]:
        provenance = {
            **self.provenance,
            "training_tokens": self.cfg.total_tokens,
            "run_dir": str(self.out),
            "snmf_loss": fit.loss,
            "snmf_fvu": fit.fvu,
            "snmf_best_iter": fit.best_iter,
            "snmf_iterations": len(fit.losses),
            "snmf_solver": "stream" if c.snmf_stream_passes else "full",
        }
        sae = snmf_from_fit(c, fit.F_DK)
        path = self.out / "saes" / name
        exported = export_dictionary(
            sae, path, c.hook, self.stream.norm_factors.get(c.hook), provenance
        )
        keys = ("snmf_fvu", "snmf_best_iter", "snmf_iterations", "snmf_solver")
        return {**exported, **{k: provenance[k] for k in keys}}


def _log(history: Path, name: str, fit: SNMFFit) -> None:
    """Loss and FVU per iteration (pass) in the trainer's history.jsonl format."""
    with history.open("a") as fh:
        for step, loss in enumerate(fit.losses, start=1):
            record = {f"{name}/loss/total": loss, f"{name}/fvu": loss / max(fit.centered_sq, 1e-30)}
            fh.write(json.dumps({"step": step, **record}) + "\n")
