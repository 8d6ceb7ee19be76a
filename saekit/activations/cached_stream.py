"""The cached stream: a `saekit cache` directory served like the live stream.

Chunks of ~buffer_sequences × 127 rows are permuted by (seed, chunk index, epoch), the live
stream's shuffle granularity; the position is one row index that runs on past the end of the
cache (epoch = position // rows), so restoring it costs one chunk read. Training for more
tokens than the cache holds reads it again in epochs, each chunk in a fresh order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.activations.cache import ActivationCache
from saekit.activations.stream import (
    BaseStream,
    StreamConfig,
    apply_outliers,
    check_nonfinite,
    finite_rows,
)
from saekit.errors import SaekitError


class CachedActivationStream(BaseStream):
    """Serves a cache like the live stream: chunks of rows permuted by (seed, chunk, epoch).

    Rows holding NaN/inf in any hook are skipped, counted and limited as the live stream does
    them (stream.max_nonfinite_fraction), and the outlier policy is applied to each chunk as
    the live stream applies it to each buffer; a chunk is counted when the stream enters it.
    The position is a row index into the cache's epochs: each batch reads on from it until it
    has enough served rows, so a clean cache with no filter serves exactly its rows in order.
    """

    def __init__(self, cfg: StreamConfig, verify: bool = True, rows: int | None = None) -> None:
        """rows: serve only the cache's first `rows` rows (in epochs), e.g. to compare epochs
        over a smaller cache with one over a larger one."""
        assert cfg.cache_dir is not None
        self.cfg = cfg
        self.cache = ActivationCache(cfg.cache_dir, verify=verify)
        missing = [h for h in cfg.hooks if h not in self.cache.arrays]
        if missing:
            raise SaekitError(
                f"Cache {cfg.cache_dir} has no hook {missing[0]!r}; it holds "
                f"{sorted(self.cache.arrays)}."
            )
        self.d_in = {h: self.cache.manifest["hooks"][h]["d_in"] for h in cfg.hooks}
        if rows is not None:
            if not 0 < rows <= self.cache.rows:
                raise SaekitError(f"rows={rows}: the cache holds {self.cache.rows:,} rows.")
            self.cache.rows = rows
        self.norm_factors = {}
        self.n_tokens_served = self.n_nonfinite = self.n_tokens_seen = self.n_outliers = 0
        # Same shuffle granularity as the live stream: ~buffer_sequences × 127 rows per chunk.
        self.chunk_rows = min(cfg.buffer_sequences * 127, self.cache.rows)
        self._position = 0
        self._chunk_id: tuple[int, int] | None = None
        """(epoch, chunk) of the loaded chunk."""
        self._rows: dict[str, Tensor] = {}
        self._keep_N: Tensor | None = None
        """Which rows of the loaded chunk are served: finite in every hook and not filtered as
        outliers (None: all of them)."""
        self._n_nonfinite = self._n_outliers = 0
        """The loaded chunk's rows holding NaN/inf, and its outliers."""
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> None:
        """Serve data-parallel rank `rank` of `world`: its batch_size rows of each global batch
        of world·batch_size rows, so the ranks' batches concatenate to a 1-process batch."""
        self.rank, self.world = rank, world

    def _load(self, epoch: int, c: int) -> None:
        start = c * self.chunk_rows
        count = min(self.chunk_rows, self.cache.rows - start)
        # Epoch 0's order is the one caches were always read in; later epochs reshuffle.
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + c + epoch * 15_485_863)
        perm = torch.randperm(count, generator=gen)
        dtype = getattr(torch, self.cfg.dtype)
        rows = {h: self.cache.read(h, start, count)[perm].to(dtype) for h in self.cfg.hooks}
        finite_N = torch.stack([finite_rows(x) for x in rows.values()]).all(dim=0)
        rows, keep_N, self._n_outliers = apply_outliers(rows, finite_N, self.cfg)
        self._n_nonfinite = count - int(finite_N.sum())
        self._keep_N = None if bool(keep_N.all()) else keep_N
        self._estimate_norm_factors(self._served(rows))
        self._rows, self._chunk_id = rows, (epoch, c)

    def _served(
        self, rows: dict[str, Tensor], lo: int = 0, hi: int | None = None
    ) -> dict[str, Tensor]:
        if self._keep_N is None:
            return {h: x[lo:hi] for h, x in rows.items()}
        keep = self._keep_N[lo:hi]
        return {h: x[lo:hi][keep] for h, x in rows.items()}

    def _enter_chunk(self) -> None:
        """Count the loaded chunk's tokens, skipped rows and outliers; abort past the limit."""
        self.n_tokens_seen += next(iter(self._rows.values())).shape[0]
        self.n_nonfinite += self._n_nonfinite
        self.n_outliers += self._n_outliers
        dtype = f" or overflow stream.dtype={self.cfg.dtype}" if self.cfg.dtype != "float32" else ""
        check_nonfinite(
            self,
            f"the cache {self.cfg.cache_dir} holds non-finite values{dtype}. Rebuild it with "
            "`saekit cache RECIPE --cache.overwrite true`, or raise "
            "stream.max_nonfinite_fraction to train on its finite rows.",
        )

    def next_batch(self) -> dict[str, Tensor]:
        # Every rank reads the global batch's rows (shared through the page cache) and keeps
        # rows [rank·B, (rank+1)·B) of its finite ones.
        need = self.world * self.cfg.batch_size
        mine = range(self.rank * self.cfg.batch_size, (self.rank + 1) * self.cfg.batch_size)
        pieces: dict[str, list[Tensor]] = {h: [] for h in self.cfg.hooks}
        got = since_finite = 0
        while got < need:
            epoch, row = divmod(self._position, self.cache.rows)
            c, off = divmod(row, self.chunk_rows)
            if self._chunk_id != (epoch, c):
                self._load(epoch, c)
            if off == 0:
                self._enter_chunk()
            n_rows = next(iter(self._rows.values())).shape[0]
            take = min(need - got, n_rows - off)
            rows = self._served(self._rows, off, off + take)
            n_kept = next(iter(rows.values())).shape[0]
            lo, hi = max(mine.start - got, 0), min(mine.stop - got, n_kept)
            if lo < hi:
                for h in self.cfg.hooks:
                    pieces[h].append(rows[h][lo:hi])
            self._position += take
            got += n_kept
            since_finite = 0 if n_kept else since_finite + take
            if since_finite > self.cache.rows:
                raise SaekitError(
                    f"Every row of the cache {self.cfg.cache_dir} holds NaN/inf: rebuild it "
                    "with `saekit cache RECIPE --cache.overwrite true`."
                )
        self.n_tokens_served += self.cfg.batch_size
        return self._scaled({h: torch.cat(p) for h, p in pieces.items()})

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self._position,
            "norm_factors": dict(self.norm_factors),
            "n_tokens_served": self.n_tokens_served,
            "n_nonfinite": self.n_nonfinite,
            "n_tokens_seen": self.n_tokens_seen,
            "n_outliers": self.n_outliers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._position = int(state["position"])
        self.norm_factors = {k: float(v) for k, v in state["norm_factors"].items()}
        self.n_tokens_served = int(state["n_tokens_served"])
        self.n_nonfinite = int(state.get("n_nonfinite", 0))
        self.n_tokens_seen = int(state.get("n_tokens_seen", 0))
        self.n_outliers = int(state.get("n_outliers", 0))
        self._chunk_id = None
