"""The receive pool: large received CPU tensors reuse warm blocks once dropped (Note [receive pool])."""

from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")

from ember.gpu.recv_pool import POOLED_MIN, ReceivePool  # noqa: E402

MiB = 1 << 20


def test_small_tensors_are_plain_allocations():
    pool = ReceivePool()
    t = pool.empty((4, 4), torch.float32)
    assert t.shape == (4, 4) and t.dtype == torch.float32 and t.untyped_storage().resizable()
    del t
    assert pool.idle_bytes() == 0


def test_a_dropped_tensor_gives_its_block_back_at_once_and_the_next_reuses_it():
    pool = ReceivePool()
    gc.disable()   # given back by reference counting, not by the cyclic GC
    try:
        t = pool.empty((2, MiB), torch.bfloat16)
        assert t.shape == (2, MiB) and t.dtype == torch.bfloat16 and t.is_contiguous()
        address = t.data_ptr()
        view = t[1]
        del t
        assert pool.idle_bytes() == 0          # a view still uses the block
        del view
        assert pool.idle_bytes() == 4 * MiB
        again = pool.empty((MiB,), torch.float32)
        assert again.data_ptr() == address and pool.idle_bytes() == 0
        again.fill_(3.0)
        assert float(again.sum()) == 3.0 * MiB
    finally:
        gc.enable()


def test_a_block_serves_only_tensors_of_at_least_half_its_size():
    pool = ReceivePool()
    big = pool.empty((8 * MiB,), torch.uint8)
    del big
    small = pool.empty((2 * MiB,), torch.uint8)
    assert pool.idle_bytes() == 8 * MiB        # a new block: the idle one is too large
    del small
    assert pool.idle_bytes() == 10 * MiB


def test_idle_blocks_beyond_the_limit_are_freed_oldest_first():
    pool = ReceivePool(idle_bytes=3 * POOLED_MIN)
    held = [pool.empty((POOLED_MIN,), torch.uint8) for _ in range(5)]
    addresses = [t.data_ptr() for t in held]
    while held:
        del held[0]    # given back in order: the last three stay idle
    assert pool.idle_bytes() == 3 * POOLED_MIN
    assert pool.empty((POOLED_MIN,), torch.uint8).data_ptr() == addresses[-1]
