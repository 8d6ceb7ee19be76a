"""Run `saekit ARGS` with a fault injected, for tests that kill the process mid-run.

    python fault_runner.py stall-batch N ARGS...       serve N batches, then hang
    python fault_runner.py stall-state-write STEP ARGS...
        write half of checkpoint STEP's trainer_state.pt, then hang

When the fault point is reached it prints `STALLED <pid>` on stdout and sleeps, so the test can
SIGKILL it at a known point without any timing assumption. Under torchrun each rank runs it
(only rank 0's stdout is shown).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import saekit.train.checkpoint as checkpoint
from saekit.activations.cached_stream import CachedActivationStream
from saekit.cli import main


def hang() -> None:
    print(f"STALLED {os.getpid()}", flush=True)
    while True:
        time.sleep(60)


def stall_batch(n: int) -> None:
    served = CachedActivationStream.next_batch
    calls = [0]

    def next_batch(self: CachedActivationStream) -> Any:
        calls[0] += 1
        if calls[0] > n:
            hang()
        return served(self)

    CachedActivationStream.next_batch = next_batch  # type: ignore[method-assign]


def stall_state_write(step: int) -> None:
    save = checkpoint.torch.save

    def torn_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        save(obj, path, *args, **kwargs)
        if f"step-{step:08d}" in str(path):
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            hang()

    checkpoint.torch.save = torn_save  # type: ignore[assignment]


if __name__ == "__main__":
    mode, value, *args = sys.argv[1:]
    {"stall-batch": stall_batch, "stall-state-write": stall_state_write}[mode](int(value))
    sys.exit(main(args))
