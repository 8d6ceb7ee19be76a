"""The three trainers of `saekit bench quality`, each on the same rows in the same order.

Every side reads a `BenchRows` stream: the training cache served by the cached stream with
one seed, so batch i is the same rows for every side (their digest is recorded and compared).
Before batch i is served the stream calls the probe with the tokens seen so far, and each side
hands it a saekit TopKSAE holding its current weights (taking raw activations); the probe's
time is excluded from the side's wall-clock.

- saekit: its `Trainer` on a TopK slot at saekit's defaults (TopK's: lr 4 × 2e-4/√(d_sae/2^14)
  with warmup and a linear decay over the last half, no gradient clip; b_dec at the geometric
  median, AuxK 1/32, unit decoder rows), on activations scaled to mean norm √d_in. Its
  resolved settings are recorded with the run (`saekit_settings`).
- SAELens: `SAETrainer.fit` on `TopKTrainingSAE`, with the trainer config SAELens' own
  `LanguageModelSAERunnerConfig` derives from its defaults (Adam 3e-4 constant, no warmup,
  decoder init norm 0.1, AuxK coefficient 1 after 1,000 steps without firing, b_dec 0, no
  normalization); the rows are its data provider.
- sparsify: `Trainer.fit` at its defaults (SignSGD in ScheduleFree, lr 5e-3/√(d_sae/2^14),
  FVU loss, AuxK off, b_dec at the first batch's mean), given a stand-in model whose hooked
  module outputs the step's rows: 32 "sequences" of 128 positions (sparsify's default batch of
  32 sequences, at the cache's context size). Its ScheduleFree weights are read in eval mode,
  as sparsify's own save does.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saekit.activations.cached_stream import CachedActivationStream
from saekit.activations.stream import StreamConfig
from saekit.bench import peers
from saekit.dictionaries import SAEConfig
from saekit.dictionaries.topk import TopKSAE

Probe = Callable[[int, TopKSAE], None]
"""Called with (tokens seen, the side's dictionary now) at each budget point."""


@dataclass(frozen=True)
class Run:
    """One training run of one side."""

    side: str
    """saekit, saelens or sparsify."""
    lr: float | None
    """Learning rate; None = the library's default."""
    seed: int
    """Seed of the dictionary's initialization."""
    tokens: int
    """Training tokens (a whole number of batches is trained)."""
    d_sae: int
    k: int
    batch_size: int
    hook: str
    cache_dir: str
    context: int = 128
    """Rows per "sequence" of sparsify's batches (the cache's context size)."""
    data_seed: int = 0
    """Seed of the cached stream's shuffle: the same for every side and seed."""

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size


class BenchRows(CachedActivationStream):
    """The cached stream every side reads: records a digest of the raw rows it serves and
    calls `probe` before serving a batch that starts at a budget point."""

    def __init__(self, run: Run, points: set[int], normalize: bool = False) -> None:
        cfg = StreamConfig(
            hooks=(run.hook,),
            batch_size=run.batch_size,
            cache_dir=run.cache_dir,
            seed=run.data_seed,
            normalize=normalize,
        )
        super().__init__(cfg, verify=False)
        self.points = points
        self.current: Callable[[], TopKSAE] | None = None
        """The side's dictionary now; set by the side once it exists."""
        self.probe: Probe | None = None
        self.probe_seconds = 0.0
        self._digest = hashlib.sha256()

    def check_point(self, tokens: int) -> None:
        if tokens in self.points and self.probe is not None and self.current is not None:
            t0 = time.perf_counter()
            self.probe(tokens, self.current())
            self.probe_seconds += time.perf_counter() - t0

    def next_batch(self) -> dict[str, Tensor]:
        self.check_point(self.n_tokens_served)
        return super().next_batch()

    def _scaled(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        for x in batch.values():  # the raw rows, before any normalization
            self._digest.update(x.numpy().tobytes())
        return super()._scaled(batch)

    def digest(self) -> str:
        return self._digest.hexdigest()[:16]

    def x(self) -> Tensor:
        return self.next_batch()[self.cfg.hooks[0]]


def topk_from_weights(
    W_enc_DS: Tensor, b_enc_S: Tensor, W_dec_SD: Tensor, b_dec_D: Tensor, k: int
) -> TopKSAE:
    """A saekit TopKSAE with these weights: z = TopK(ReLU((x − b_dec) W_enc + b_enc))."""
    d_in, d_sae = W_enc_DS.shape
    sae = TopKSAE(SAEConfig(method="topk", d_sae=d_sae, k=k), d_in)
    tensors = {"W_enc": W_enc_DS, "b_enc": b_enc_S, "W_dec": W_dec_SD, "b_dec": b_dec_D}
    sae.import_tensors({n: t.detach().float().cpu() for n, t in tensors.items()}, {})
    return sae.eval()


def saekit_config(run: Run) -> Any:
    from saekit.train.config import TrainConfig

    return TrainConfig(total_tokens=run.tokens, lr=run.lr, wandb_mode="disabled")


def saekit_settings(run: Run) -> dict[str, Any]:
    """The optimization settings saekit trains `run` with, method defaults resolved: a kept
    run is reused only while they still hold."""
    from saekit.train.slot import resolved_optimizer

    train = saekit_config(run)
    cfg = asdict(train)
    fields = ("sparsity_warmup_steps", "dead_window_tokens", "b_dec_init_samples", "seed")
    out = {**resolved_optimizer(TopKSAE, run.d_sae, train), **{f: cfg[f] for f in fields}}
    return {**out, "adam_betas": list(cfg["adam_betas"])}  # a list, as JSON reads it back


def train_saekit(run: Run, rows: BenchRows) -> dict[str, Any]:
    from saekit.train.trainer import Trainer

    cfg = saekit_config(run)
    sae_cfg = SAEConfig(method="topk", hook=run.hook, d_sae=run.d_sae, k=run.k, seed=run.seed)
    trainer = Trainer((sae_cfg,), cfg, rows)
    slot = trainer.slots[0]

    def current() -> TopKSAE:
        sae = slot.exported().cpu()
        assert isinstance(sae, TopKSAE)
        sae.fold_normalization(rows.norm_factors.get(run.hook, 1.0))
        return sae.eval()

    rows.current = current
    trainer.train()
    return {"lr": slot.optimizer.param_groups[0]["initial_lr"], "settings": saekit_settings(run)}


def train_saelens(run: Run, rows: BenchRows) -> dict[str, Any]:
    from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae_cfg = TopKTrainingSAEConfig(d_in=rows.d_in[run.hook], d_sae=run.d_sae, k=run.k)
    runner = LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        hook_name=run.hook,
        training_tokens=run.steps * run.batch_size,
        train_batch_size_tokens=run.batch_size,
        logger=LoggingConfig(log_to_wandb=False),
        **({} if run.lr is None else {"lr": run.lr}),
    )
    torch.manual_seed(run.seed)
    sae = TopKTrainingSAE(sae_cfg)

    def current() -> TopKSAE:
        folded = copy.deepcopy(sae)
        if folded.cfg.rescale_acts_by_decoder_norm:
            folded.fold_W_dec_norm()
        return topk_from_weights(folded.W_enc, folded.b_enc, folded.W_dec, folded.b_dec, run.k)

    def provider() -> Iterator[Tensor]:
        while True:
            yield rows.x()

    rows.current = current
    trainer = SAETrainer(runner.to_sae_trainer_config(), sae, data_provider=provider())
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit()
    return {"lr": runner.lr}


class _RowsModel(nn.Module):
    """A stand-in language model for sparsify's Trainer: its module `rows` outputs the bench
    rows of the step (input ids are row positions), where sparsify's hook trains on them."""

    def __init__(self, rows: BenchRows, hook: str, context: int) -> None:
        super().__init__()
        self.rows = nn.Identity()
        self.source, self.context = rows, context
        self.width = rows.d_in[hook]
        self.device = torch.device("cpu")
        self.dummy_inputs = {"input_ids": torch.full((1, 1), -1)}

    @property
    def base_model(self) -> nn.Module:
        return self

    def forward(self, input_ids: Tensor) -> Tensor:
        if int(input_ids[0, 0]) < 0:  # sparsify's width probe
            return self.rows(torch.zeros(1, 1, self.width))
        if int(input_ids[0, 0]) != self.source.n_tokens_served:
            raise RuntimeError("sparsify's batches are out of step with the bench rows")
        x = self.source.x().view(*input_ids.shape, self.width)
        return self.rows(x)


class _Positions(torch.utils.data.Dataset[dict[str, Tensor]]):
    """`steps × batch_size` row positions, as sequences of `context` "tokens"."""

    def __init__(self, n_rows: int, context: int) -> None:
        self.n, self.context = n_rows // context, context

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": torch.arange(i * self.context, (i + 1) * self.context)}


def train_sparsify(run: Run, rows: BenchRows) -> dict[str, Any]:
    sp = peers.sparsify()
    context = run.context
    precision = torch.get_float32_matmul_precision()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        cfg = sp.TrainConfig(
            sp.SparseCoderConfig(num_latents=run.d_sae, k=run.k),
            batch_size=run.batch_size // context,
            lr=run.lr,
            hookpoints=["rows"],
            init_seeds=[run.seed],
            log_to_wandb=False,
            save_dir=tmp,
            run_name="bench",
        )
        model = _RowsModel(rows, run.hook, context)
        trainer = sp.Trainer(cfg, _Positions(run.steps * run.batch_size, context), model)
        sae, (opt,) = trainer.saes["rows"], trainer.optimizers

        def current() -> TopKSAE:
            opt.eval()  # ScheduleFree: the weights to evaluate are the averaged iterate
            try:
                return topk_from_weights(
                    sae.encoder.weight.T, sae.encoder.bias, sae.W_dec, sae.b_dec, run.k
                )
            finally:
                opt.train()

        rows.current = current
        try:
            trainer.fit()
        finally:
            # fit() sets it process-wide for CUDA tensor cores; the other sides keep theirs.
            torch.set_float32_matmul_precision(precision)
        lr = opt.param_groups[0]["lr"]
    return {"lr": lr}


TRAINERS: dict[str, Callable[[Run, BenchRows], dict[str, Any]]] = {
    "saekit": train_saekit,
    "saelens": train_saelens,
    "sparsify": train_sparsify,
}
SIDES = tuple(TRAINERS)


def train(run: Run, points: set[int], probe: Probe) -> dict[str, Any]:
    """Train `run`, probing at `points` (tokens) and at the end; wall-clock without probes."""
    rows = BenchRows(run, points, normalize=run.side == "saekit")
    rows.probe = probe
    t0 = time.perf_counter()
    info = TRAINERS[run.side](run, rows)
    wall = time.perf_counter() - t0 - rows.probe_seconds
    assert rows.current is not None
    final = rows.current()
    probe(rows.n_tokens_served, final)
    return {
        **info,
        "wall_s": wall,
        "tokens": rows.n_tokens_served,
        "rows_digest": rows.digest(),
        "dictionary": final,
    }
