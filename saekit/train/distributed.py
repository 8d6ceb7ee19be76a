"""torchrun support: which rank trains what, and the few collectives that keep ranks in step.

`torchrun --nproc_per_node N -m saekit train RECIPE` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR; `Distributed.from_env` joins that process group (gloo on CPU, nccl on CUDA). In a
plain `saekit train` every method below is a no-op, so one code path serves both.

parallel = "data": every rank holds every dictionary and reads its own 1/N of each global batch
(`stream.batch_size` stays the GLOBAL batch, so one recipe means the same run on 1 or N
processes). Per step and dictionary: one all-reduce of the gradients with the loss appended
(≈ 2·S·D floats: 42 MB in fp32 at S 9216 × D 576) and one of the firing counts (S int64).
Everything the update depends on is then identical on all ranks: gradients, clipping, Adam,
the dead-latent clocks and the L0 controller (both read global counts); float buffers that a
forward updates from its own rows (BatchTopK's θ) are averaged after the step. Exact for
losses that are means over rows (MSE, L1, L0); BatchTopK's k·b budget and AuxK's variance
normalization are per rank, the same in expectation but not bit for bit.

parallel = "hooks": dictionary i lives on rank i mod N and sees every token; each rank runs the
model itself and streams only the hooks its dictionaries read. Nothing is exchanged per step;
logs and checkpoints are gathered on rank 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as td
from torch import Tensor, nn

from saekit.errors import SaekitError

Parallel = Literal["data", "hooks"]
T = TypeVar("T")


class Distributed:
    """This process's place in the run: rank, world size, mode; collectives over the group."""

    def __init__(self, rank: int = 0, world: int = 1, mode: Parallel = "data") -> None:
        self.rank, self.world, self.mode = rank, world, mode
        self.owns_group = False
        """Whether this object initialized the process group (and so destroys it)."""

    @classmethod
    def from_env(cls, mode: Parallel, device: str, timeout_s: int = 1800) -> Distributed:
        """Join the torchrun process group if WORLD_SIZE > 1, else a single-process stand-in."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        dist = cls(int(os.environ["RANK"]), world, mode)
        if not td.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local_device(device))
            td.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
            dist.owns_group = True
        if not dist.is_main:
            # One summary, not N: rank 0 reports for the run (every rank's errors reach stderr).
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - open for the process's lifetime
        return dist

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_world(self) -> int:
        """Ranks that split each batch (1 in hooks mode: every rank reads the whole batch)."""
        return self.world if self.mode == "data" else 1

    def owns(self, index: int) -> bool:
        """Whether dictionary `index` of the recipe trains on this rank."""
        return self.mode == "data" or index % self.world == self.rank

    def close(self, finished: bool = True) -> None:
        """Leave the group. After a normal end, first wait for every rank: a rank that tears
        down gloo while rank 0 still writes the final save aborted the job in CI ("terminate
        called without an active exception", SIGABRT). After an error, leave at once: torchrun
        stops the others, and a barrier could hang on a rank that is gone."""
        if self.owns_group and td.is_initialized():
            if finished:
                td.barrier()
            td.destroy_process_group()

    # ---- agreement: an error on one rank becomes the same error on all -------------------------
    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only; its SaekitError is raised on every rank (no rank hangs)."""
        message, result = None, None
        if self.is_main:
            try:
                result = fn()
            except SaekitError as exc:
                message = str(exc)
        if self.active:
            box = [message]
            td.broadcast_object_list(box, src=0)
            message = box[0]
        if message is not None:
            raise SaekitError(message)
        return result

    def everywhere(self, fn: Callable[[], T]) -> T:
        """Run `fn` on every rank; a SaekitError on any rank is raised on all of them."""
        message, result = None, None
        try:
            result = fn()
        except SaekitError as exc:
            message = str(exc)
        if self.active:
            message = next((m for m in self.all_gather(message) if m is not None), None)
        if message is not None:
            raise SaekitError(message)
        return result  # type: ignore[return-value]

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (pickled; for checkpoints read on rank 0)."""
        if not self.active:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj` on rank 0, in rank order ([] on the other ranks)."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.is_main else None
        td.gather_object(obj, out, dst=0)
        return out or []

    @contextmanager
    def main_only(self, enter: Callable[[], Any], leave: Callable[[], Any]) -> Iterator[None]:
        """`enter` on rank 0 (its refusal raised everywhere), the body on all, `leave` on 0."""
        self.on_main(enter)
        try:
            yield
        finally:
            if self.is_main:
                leave()

    # ---- data-parallel step ----------------------------------------------------------------------
    def reduce_grads(self, module: nn.Module, loss: Tensor) -> Tensor:
        """Average the gradients (and the loss) over data-parallel ranks, in one all-reduce.

        Each rank's loss is a mean over its b rows, so the mean of the N rank gradients is the
        gradient of the mean over the N·b rows of the global batch.
        """
        if not self.active or self.mode != "data":
            return loss
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.detach().reshape(1)])
        td.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1]

    def sum_counts(self, counts: Tensor) -> Tensor:
        """Summed over data-parallel ranks (firing counts of the global batch)."""
        if self.active and self.mode == "data":
            td.all_reduce(counts)
        return counts

    def sync_buffers(self, module: nn.Module) -> None:
        """Average float buffers (BatchTopK's θ EMA) that each rank updated from its own rows."""
        if not self.active or self.mode != "data":
            return
        for buf in module.buffers():
            if buf.is_floating_point():
                td.all_reduce(buf)
                buf /= self.world

    def head_rows(self, x_BD: Tensor, n: int) -> Tensor:
        """The first n rows of the global batch (rank r holds rows [r·b, (r+1)·b))."""
        head = x_BD[:n]
        if not self.active or self.mode != "data":
            return head
        parts = [torch.empty_like(head) for _ in range(self.world)]
        td.all_gather(parts, head.contiguous())
        return torch.cat(parts)[:n]

    def agree_norm_factors(self, factors: dict[str, float]) -> dict[str, float]:
        """One normalization factor per hook for all ranks: the mean of the ranks' estimates."""
        if not self.active or self.mode != "data" or not factors:
            return factors
        every = self.all_gather(factors)
        return {h: sum(f[h] for f in every) / self.world for h in factors}

    def merge_record(self, record: dict[str, float]) -> dict[str, float]:
        """A log line for rank 0: data mode averages the ranks' values, hooks mode unites them."""
        if not self.active:
            return record
        every = self.all_gather(record)
        if self.mode == "hooks":
            return {k: v for rec in every for k, v in rec.items()}
        return {k: sum(rec[k] for rec in every) / self.world for k in record}


def local_device(device: str) -> str:
    """cuda[:i] → cuda:LOCAL_RANK under torchrun (one GPU per process); others unchanged."""
    if device.startswith("cuda") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def check_world(mode: Parallel, world: int, batch_size: int, n_saes: int) -> None:
    """Refuse a split that cannot work, naming the fix."""
    if world <= 1:
        return
    if mode == "data" and batch_size % world:
        raise SaekitError(
            f"stream.batch_size {batch_size} is the global batch and must divide evenly over "
            f"{world} data-parallel processes; use a multiple of {world}."
        )
    if mode == "hooks" and n_saes < world:
        raise SaekitError(
            f"train.parallel=hooks deals {n_saes} dictionar{'y' if n_saes == 1 else 'ies'} over "
            f"{world} processes, so some would idle; launch at most {n_saes} processes or use "
            "train.parallel=data."
        )


class RankWindows:
    """A live stream's context windows seen by one data-parallel rank: buffer r of rank k is
    buffer r·N + k of the split, so the ranks' buffers are disjoint and together cover it."""

    def __init__(self, windows: Any, rank: int, world: int, buffer_sequences: int) -> None:
        self.windows, self.rank, self.world, self.size = windows, rank, world, buffer_sequences

    def __len__(self) -> int:
        return len(self.windows)

    def get(self, start: int, count: int) -> Tensor:
        buffer, within = divmod(start, self.size)
        return self.windows.get((buffer * self.world + self.rank) * self.size + within, count)

    def token_mask(self, tokens_BT: Tensor) -> Tensor:
        return self.windows.token_mask(tokens_BT)


def shard_stream(stream: Any, dist: Distributed) -> None:
    """Give this data-parallel rank its own share of the tokens (streams opened per rank)."""
    if not dist.active or dist.mode != "data":
        return
    from saekit.activations.stream import ActivationStream

    if isinstance(stream, ActivationStream):
        stream.windows = RankWindows(
            stream.windows, dist.rank, dist.world, stream.cfg.buffer_sequences
        )
    elif hasattr(stream, "shard"):
        stream.shard(dist.rank, dist.world)
    else:
        raise SaekitError(
            f"{type(stream).__name__} cannot be split over data-parallel processes; use "
            "train.parallel=hooks or a single process."
        )
