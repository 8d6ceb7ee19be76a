"""`kill` (SIGTERM) during `saekit cache` unwinds like Ctrl-C: exit 143, one line, and no
partial cache left next to the output directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import argparse, sys, time
    import torch
    from saekit import cli
    from saekit.activations.cache import CacheConfig, write_cache
    from saekit.activations.tensors import TensorStream

    out, flag = sys.argv[1], sys.argv[2]
    stream = TensorStream({"h": torch.randn(4096, 8)}, batch_size=16, shuffle=False)
    serve = stream.next_batch

    def slow_batch():
        open(flag, "w").close()  # the cache is being written: the parent may send SIGTERM
        time.sleep(0.05)
        return serve()

    stream.next_batch = slow_batch

    def parser():
        p = argparse.ArgumentParser()
        p.set_defaults(func=lambda args: write_cache(
            stream, CacheConfig(output_dir=out, n_tokens=4096, shard_tokens=32), {}))
        return p

    cli.build_parser = parser
    sys.exit(cli.main([]))
    """
)


def test_sigterm_during_a_cache_write_leaves_nothing_behind(tmp_path: Path) -> None:
    out, flag = tmp_path / "cache", tmp_path / "writing"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), str(flag)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not flag.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a few shards are on disk in the temporary directory
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    os.kill(child.pid, signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert [ln for ln in err.splitlines() if ln.startswith("saekit:")] == [
        "saekit: terminated (SIGTERM)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["writing"]


def test_a_run_stopped_by_sigterm_says_so_and_how_to_continue() -> None:
    from saekit.errors import Terminated
    from saekit.fitting import ended

    assert ended(Terminated("signal 15"), 7, None) == {
        "status": "interrupted",
        "error": "stopped by SIGTERM; continue it with --resume",
        "step": 7,
    }
    assert ended(KeyboardInterrupt(), 7, None)["error"].startswith("stopped by Ctrl-C")
