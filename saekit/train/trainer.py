"""The training loop: several dictionaries fed from one activation stream.

Each dictionary has its own Adam, LR schedule, dead-latent clock and (for relu/jumprelu with a
target L0) sparsity controller; all read their hook's rows from the same batch, so N SAEs on
one layer (a sweep) or on N layers cost one model forward. Logging (tqdm, history, wandb) and
checkpoints happen every `log_every` / `checkpoint_every` steps; between them only the
finite-loss check and the L0 controller (relu/jumprelu with target_l0) read a value on the
host each step. Under torchrun the ranks split the batch or the dictionaries (`distributed.py`);
rank 0 logs and writes checkpoints (`run_state.py`). Without a run directory nothing is
written: the history stays in memory and the trained dictionaries are returned.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from saekit.activations.progress import TokenProgress
from saekit.activations.stream import BaseStream
from saekit.dictionaries import Dictionary, SAEConfig, TrainableDictionary, TrainContext
from saekit.dictionaries.registry import build_dictionary
from saekit.errors import SaekitError
from saekit.eval.metrics import fvu, log10_density
from saekit.rundir import RunDir
from saekit.train.checkpoint import has_checkpoint, save_checkpoint
from saekit.train.config import TrainConfig
from saekit.train.distributed import Distributed
from saekit.train.geometric_median import geometric_median
from saekit.train.logging import RunLogger
from saekit.train.run_state import RunState, gather_state, read_state, restore_state
from saekit.train.schedule import sparsity_scale
from saekit.train.slot import Slot, resolve_hook, slot_name


class Trainer:
    """Trains `sae_cfgs` on `stream`; writes into `run_dir` when one is given."""

    def __init__(
        self,
        sae_cfgs: tuple[SAEConfig, ...],
        cfg: TrainConfig,
        stream: BaseStream,
        run_config: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        dist: Distributed | None = None,
        run_dir: RunDir | None = None,
    ) -> None:
        if not sae_cfgs:
            raise SaekitError("The recipe trains no dictionary: add at least one entry to saes.")
        self.cfg, self.stream, self.run_config = cfg, stream, run_config or {}
        self.provenance = provenance or {}
        self.dist = dist or Distributed()
        self.run_dir = run_dir
        self.batch_tokens = stream.cfg.batch_size * self.dist.data_world
        """Tokens per step over all ranks (= stream.batch_size of the recipe)."""
        self.n_steps = max(1, cfg.total_tokens // self.batch_tokens)
        self.step = 0
        self.saved_step = -1
        """Step of the newest checkpoint written or loaded (the end skips rewriting it)."""
        self.history: list[dict[str, float]] = []
        """Every log record ({"step": n, "NAME/fvu": ...}), as history.jsonl holds them."""
        self.dictionaries: dict[str, Dictionary] = {}
        """After training: the exported (folded, CPU) copy of each dictionary this rank owns."""
        self.slots = []
        for i, sae_cfg in enumerate(sae_cfgs):
            if not self.dist.owns(i):
                continue
            hook = resolve_hook(i, sae_cfg, stream)
            sae_cfg = replace(sae_cfg, hook=hook)
            d_out = stream.d_in[sae_cfg.output_hook] if sae_cfg.output_hook else None
            sae = build_dictionary(sae_cfg, stream.d_in[hook], d_out)
            if not isinstance(sae, TrainableDictionary):
                raise SaekitError(
                    f"saes[{i}]: method {sae_cfg.method} is fitted in closed form, not trained "
                    "by gradient steps; train it in a recipe whose dictionaries are all fitted."
                )
            name = slot_name(i, sae_cfg, hook)
            self.slots.append(Slot(name, hook, sae.to(cfg.device), cfg, self.n_steps))

    # ---- init / state ------------------------------------------------------------------------
    def init_b_dec(self, batch: dict[str, torch.Tensor]) -> None:
        """b_dec ← geometric median of the first rows (robust to attention-sink outliers).

        A transcoder's b_dec is the median of its output rows, and b_enc ← −median(x) W_enc
        centres its pre-activations as an SAE's pre-bias b_dec does."""
        n = self.cfg.b_dec_init_samples
        if n <= 0:
            return
        for slot in self.slots:
            sae = slot.sae
            sample = self.dist.head_rows(batch[slot.target_hook].to(self.cfg.device).float(), n)
            sae.b_dec.data.copy_(geometric_median(sample).to(sae.b_dec.dtype))
            if sae.is_transcoder:
                rows = self.dist.head_rows(batch[slot.hook].to(self.cfg.device).float(), n)
                median_D = geometric_median(rows).to(sae.W_enc.dtype)
                sae.b_enc.data.copy_(-(median_D @ sae.W_enc.data))

    def agree_normalization(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Data-parallel ranks estimated the scale on their own first rows: use the mean."""
        local = dict(self.stream.norm_factors)
        agreed = self.dist.agree_norm_factors(local)
        if agreed == local:
            return batch
        self.stream.norm_factors = agreed
        return {h: x * (agreed[h] / local[h]) if h in local else x for h, x in batch.items()}

    def state_dict(self) -> RunState | None:
        """The whole run's state (dictionaries, optimizers, clocks, stream, RNGs), gathered
        on rank 0; None on the other ranks."""
        return gather_state(
            self.slots, self.dist, self.stream, self.step, self.n_steps, self.run_config
        )

    def load_state_dict(self, state: RunState) -> None:
        """Continue from `state`: every owned slot, this rank's stream position and RNGs."""
        self.step = self.saved_step = restore_state(self.slots, self.dist, self.stream, state)

    def checkpoint(self) -> None:
        """Rank 0 writes one checkpoint, the same whatever the number of processes."""
        state = self.state_dict()
        if state is not None and self.run_dir is not None:
            save_checkpoint(self.run_dir.checkpoints, self.step, *state)
        self.saved_step = self.step

    def resume(self) -> None:
        """Load the newest checkpoint; refuse (naming the difference) one of another recipe."""
        assert self.run_dir is not None, "resuming needs a run directory"
        self.load_state_dict(
            read_state(self.run_dir.checkpoints, self.slots, self.dist, self.run_config)
        )

    # ---- the loop ----------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run to train.total_tokens; returns the summary (steps, tokens, saes)."""
        out = self.run_dir
        # A run that died before its first checkpoint resumes from step 0.
        if resume and out and self.dist.broadcast(has_checkpoint(out.checkpoints)):
            self.resume()  # restores the RNG states too
        if self.step == 0:
            # Seeded here rather than at construction, so the random stream (MP's atom dropout)
            # does not depend on what else drew random numbers in this process in between.
            torch.manual_seed(self.cfg.seed)
            random.seed(self.cfg.seed)
        main = self.dist.is_main
        logger = RunLogger(out if main else None, self.cfg, self.run_config, resume)
        logger.truncate(self.step)
        # In tokens, moving with each model forward while a shuffle buffer fills.
        progress = TokenProgress(
            self.n_steps * self.batch_tokens,
            "training",
            done=self.step * self.batch_tokens,
            disable=not main,
            capture_scale=self.dist.data_world,
        )
        progress.watch(self.stream)
        try:
            self._loop(logger, progress)
        finally:
            progress.close()
        if out and self.step != self.saved_step:
            self.checkpoint()
        summary = self.export()
        self.history = logger.records
        logger.finish(summary)
        return summary

    def _loop(self, logger: RunLogger, progress: TokenProgress) -> None:
        out = self.run_dir
        t_last, tokens_last = time.perf_counter(), 0
        while self.step < self.n_steps:
            batch = self.stream.next_batch()
            if self.step == 0:
                batch = self.agree_normalization(batch)
                self.init_b_dec(batch)
            log_now = (self.step + 1) % self.cfg.log_every == 0 or self.step + 1 == self.n_steps
            record: dict[str, float] = {}
            for slot in self.slots:
                x_BD = batch[slot.hook].to(self.cfg.device)
                # A transcoder's target: its output hook's rows (same tokens, same forward).
                y = batch[slot.target_hook].to(self.cfg.device) if slot.transcoder else None
                record.update(self._step(slot, x_BD, log_now, y))
            self.step += 1
            tokens_last += self.batch_tokens
            status = None
            if log_now:
                now = time.perf_counter()
                record["tokens_per_s"] = tokens_last / max(now - t_last, 1e-9)
                record["outlier_rows"] = float(self.stream.n_outliers)
                t_last, tokens_last = now, 0
                record = self.dist.merge_record(record)
                logger.log(self.step, record)
                first = self.slots[0].name
                status = (
                    f"step {self.step}/{self.n_steps}, fvu {record[f'{first}/fvu']:.3f}, "
                    f"l0 {record[f'{first}/l0']:.1f}"
                )
            progress.consume(self.batch_tokens, status)
            if out and self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.checkpoint()

    def _step(
        self, slot: Slot, x_BD: torch.Tensor, log_now: bool, target_BO: torch.Tensor | None = None
    ) -> dict[str, float]:
        sae, cfg = slot.sae, self.cfg
        dead_S = slot.tokens_since_fired_S >= cfg.dead_window_tokens
        ctx = TrainContext(
            dead_mask_S=dead_S,
            sparsity_scale=sparsity_scale(self.step, cfg.sparsity_warmup_steps),
            target_BO=target_BO,
        )
        y_BO = x_BD if target_BO is None else target_BO
        out = sae.training_forward(x_BD, ctx)
        loss = torch.stack(list(out.losses.values())).sum()
        slot.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss = self.dist.reduce_grads(sae, loss)  # the global batch's loss, on every rank
        if not torch.isfinite(loss):
            raise SaekitError(
                f"{slot.name}: the loss became {loss.item()} at step {self.step}; "
                "lower train.lr or check the activations."
            )
        if sae.unit_norm_decoder:
            sae.remove_parallel_grad()
        grad_norm = None
        if slot.grad_clip_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(sae.parameters(), slot.grad_clip_norm)
        elif log_now:
            grads = [p.grad for p in sae.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads)
        slot.optimizer.step()
        slot.scheduler.step()
        if sae.unit_norm_decoder:
            sae.normalize_decoder()
        sae.post_step()
        self.dist.sync_buffers(sae)
        if slot.average is not None:
            slot.average.update(sae, slot.lr_multiplier(self.step))  # the step just taken
        n_rows = self.batch_tokens
        with torch.no_grad():
            # Sparse codes are counted by a scatter over B·k entries, not a B×S comparison.
            fired_S = self.dist.sum_counts(out.firing_counts_S())
            slot.fire_count_S += fired_S
            slot.tokens_since_fired_S += n_rows
            slot.tokens_since_fired_S[fired_S > 0] = 0
            l0 = None
            if slot.controller is not None and self.step >= cfg.sparsity_warmup_steps:
                l0 = float(fired_S.sum().float() / n_rows)  # = mean_B(L0) exactly
                lr = float(slot.scheduler.get_last_lr()[0])  # the loop's speed follows it
                sae.sparsity_coefficient = slot.controller.update(l0, lr)
        if not log_now:
            return {}
        with torch.no_grad():
            rec = {f"{slot.name}/loss/{k}": float(v) for k, v in out.losses.items()}
            rec[f"{slot.name}/loss/total"] = float(loss)
            rec[f"{slot.name}/fvu"] = float(fvu(y_BO, out.x_hat_BD))
            rec[f"{slot.name}/l0"] = l0 if l0 is not None else float(fired_S.sum() / n_rows)
            rec[f"{slot.name}/dead_fraction"] = float(dead_S.float().mean())
            rec[f"{slot.name}/lr"] = float(slot.scheduler.get_last_lr()[0])
            if grad_norm is not None:  # before clipping: how often the clip acts, and how hard
                rec[f"{slot.name}/grad_norm"] = float(grad_norm)
            if sae.sparsity_coefficient is not None:
                rec[f"{slot.name}/sparsity_coefficient"] = float(sae.sparsity_coefficient)
        return rec

    def export(self) -> dict[str, Any]:
        """Every dictionary with the normalization folded in (taking raw activations), saved
        under RUN_DIR/saes/NAME when there is a run directory; the run's summary."""
        tokens = self.step * self.batch_tokens
        summary: dict[str, Any] = {"steps": self.step, "tokens": tokens, "saes": {}}
        # Counted by this process's stream (data-parallel live streams: rank 0's share).
        summary["stream"] = {
            "tokens_seen": self.stream.n_tokens_seen,
            "nonfinite_rows": self.stream.n_nonfinite,
            "outlier_rows": self.stream.n_outliers,
            "outlier_policy": self.stream.cfg.outliers,
            "max_norm_multiple": self.stream.cfg.max_norm_multiple,
        }
        n_tokens = max(1, tokens)
        # Data parallel: rank 0 writes the (identical) dictionaries; hooks: each rank its own.
        mine = self.slots if self.dist.mode == "hooks" or self.dist.is_main else []
        for slot in mine:
            sae = slot.exported().cpu()
            path = self.run_dir.sae_dir(slot.name) if self.run_dir else None
            provenance = {**self.provenance, "training_tokens": n_tokens}
            if self.run_dir is not None:
                provenance["run_dir"] = str(self.run_dir.path)
            factors = self.stream.norm_factors
            summary["saes"][slot.name] = export_dictionary(
                sae,
                path,
                slot.hook,
                factors.get(slot.hook),
                provenance,
                log10_density(slot.fire_count_S, n_tokens),
                factors.get(slot.target_hook) if slot.transcoder else None,
            )
            self.dictionaries[slot.name] = sae
        parts = self.dist.all_gather(summary["saes"])
        summary["saes"] = dict(sorted((k, v) for part in parts for k, v in part.items()))
        return summary


def export_dictionary(
    sae: Dictionary,
    path: Path | None,
    hook: str,
    norm_factor: float | None,
    provenance: dict[str, Any],
    log10_density_S: torch.Tensor | None = None,
    out_norm_factor: float | None = None,
) -> dict[str, Any]:
    """Fold the stream's normalization into `sae` (a transcoder's output hook has a factor
    of its own), record provenance, save it under `path` (if given); the run's summary line."""
    if norm_factor is not None:
        sae.fold_normalization(norm_factor, out_norm_factor)
    sae.provenance = {**provenance, "hook": hook, "norm_factor": norm_factor}
    line = {"hook": hook, "method": sae.method, "path": str(path) if path else None}
    if sae.is_transcoder:
        sae.provenance |= {"output_hook": sae.cfg.output_hook, "out_norm_factor": out_norm_factor}
        line["output_hook"] = sae.cfg.output_hook
    if path is not None:
        sae.save(path, log10_density_S)
    return line
