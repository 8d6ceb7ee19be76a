"""Run a function over chunks of independent rows in worker threads (CPU)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch


def map_rows(fn: Callable[[int, int], None], n: int, per_chunk: int, device: torch.device) -> None:
    """fn(lo, hi) over row chunks of at most per_chunk rows, in threads on a multi-core CPU.

    Rows are independent, so each worker thread runs whole chunks single-threaded instead of
    every op splitting its chunk across OpenMP threads: a chunk-step is ~9 ops, and one barrier
    each (1,300 per MP step at B 4096) stalls whenever another job holds a core
    (docs/benchmarks.md).
    """
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    if n == 0:
        return
    n_chunks = -(-n // per_chunk)
    n_chunks = -(-n_chunks // threads) * threads  # equal shares per worker
    size = -(-n // n_chunks)
    map_spans(fn, [(lo, min(lo + size, n)) for lo in range(0, n, size)], threads)


def map_spans(fn: Callable[[int, int], None], spans: list[tuple[int, int]], threads: int) -> None:
    """fn(lo, hi) for every span, in `threads` worker threads (inline for one of either), each
    worker single-threaded in torch."""
    if threads == 1 or len(spans) == 1:
        for lo, hi in spans:
            fn(lo, hi)
        return

    inference = torch.is_inference_mode_enabled()

    def work(span: tuple[int, int]) -> None:
        with torch.inference_mode(inference), torch.no_grad():  # both modes are per thread
            fn(*span)

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # workers start with it (torch sets a new thread's pool lazily)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, spans))
    finally:
        torch.set_num_threads(before)


class ScratchPool:
    """Flat buffers lent to worker threads and kept between calls.

    A fresh 16 MB tensor per row chunk is a fresh mapping from the OS: its page faults and
    zeroing cost more than the pass that fills it. Each worker takes a buffer for one chunk
    and gives it back; the pool keeps at most one buffer per worker ever active, at the largest
    size asked for.
    """

    def __init__(self) -> None:
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self, numel: int, like: torch.Tensor) -> Iterator[torch.Tensor]:
        """A buffer of `numel` elements of like's dtype and device (its contents are garbage)."""
        with self._lock:
            buf = next((b for b in self._free if _same_kind(b, like)), None)
            if buf is not None:
                self._free.remove(buf)
        if buf is None or buf.numel() < numel:
            # Never an inference tensor, even when asked for under inference_mode: a later
            # call outside it writes into the same buffer (an error on inference tensors).
            with torch.inference_mode(False):
                buf = torch.empty(numel, dtype=like.dtype, device=like.device)
        try:
            yield buf[:numel]
        finally:
            with self._lock:
                self._free.append(buf)


def _same_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.device == b.device
