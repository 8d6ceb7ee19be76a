"""The scratch buffers the native pursuit lends its workers: reused, never shared at once."""

from __future__ import annotations

import threading

import torch

from saekit.kernels.row_threads import ScratchPool


def test_a_returned_buffer_is_lent_again_without_a_new_allocation() -> None:
    pool, like = ScratchPool(), torch.zeros(1)
    with pool.take(1000, like) as a:
        first = a.data_ptr()
    with pool.take(800, like) as b:  # smaller: the same memory, a view of the first 800
        assert b.data_ptr() == first and b.numel() == 800
    with pool.take(2000, like) as c:  # larger: a new buffer that replaces the old one
        assert c.numel() == 2000
        grown = c.data_ptr()
    with pool.take(2000, like) as d:
        assert d.data_ptr() == grown


def test_buffers_taken_at_once_never_overlap() -> None:
    pool, like = ScratchPool(), torch.zeros(1)
    inside, release, ptrs = threading.Barrier(4), threading.Event(), []

    def worker() -> None:
        with pool.take(4096, like) as buf:
            ptrs.append(buf.data_ptr())
            inside.wait()  # all three hold a buffer at the same time (and the test waits)
            release.wait()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    inside.wait()
    release.set()
    for t in threads:
        t.join()
    assert len(set(ptrs)) == 3


def test_dtype_is_respected() -> None:
    pool = ScratchPool()
    with pool.take(10, torch.zeros(1, dtype=torch.float32)):
        pass
    with pool.take(10, torch.zeros(1, dtype=torch.float64)) as buf:
        assert buf.dtype == torch.float64


def test_a_buffer_lent_under_inference_mode_is_writable_outside_it() -> None:
    pool = ScratchPool()
    with torch.inference_mode():
        like = torch.zeros(1)
        with pool.take(64, like) as buf:
            buf.fill_(1.0)
    with pool.take(64, torch.zeros(1)) as again:
        again.fill_(2.0)  # an inference tensor here: "Inplace update to inference tensor"
        torch.mm(torch.ones(8, 1), torch.ones(1, 8), out=again.view(8, 8))
    assert float(again.sum()) == 64.0
