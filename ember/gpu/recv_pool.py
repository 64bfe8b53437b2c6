"""Warm host memory for large received CPU tensors, reused once the tensors using it are gone.

Note [receive pool]
~~~~~~~~~~~~~~~~~~~
A gloo receive into a new ``torch.empty`` tensor writes memory the process never touched: each
4 KiB page faults on first touch. For 100 MiB that is ~50 ms on an idle 2 vCPU VM, and ~300 ms
once the guest has given its free pages back to the host (free page reporting: each first touch
then faults on the host as well), beside ~30 ms for the bytes themselves (the bare gloo
reference ``torch_gloo_p2p_100mb`` reuses one buffer). Huge pages do not help there: a fresh
2 MiB page the host took back costs as much to fault in.

So a CPU receive of ``POOLED_MIN`` bytes or more takes its memory from this pool: a block (a
64-byte-aligned uint8 ``torch.empty``, seen as a numpy array) that an earlier received tensor
used and dropped, else a new one. The tensor is ``torch.frombuffer`` over a numpy view of the
block: its storage holds the view, and when the last tensor or view of that storage is gone
(CPython frees it at once, on whatever thread drops it) a ``weakref.finalize`` on the view gives
the block back. A pending receive holds its tensor, so a block is never reused under one. A
block serves a tensor of at least half its size; the pool keeps at most ``IDLE_BYTES`` of idle
blocks, the most recently given back, and frees the rest. The tensor is a plain dense CPU
tensor, except that its storage cannot grow (``resize_`` past its size raises, as for any
``torch.frombuffer`` tensor).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch

POOLED_MIN = 1 << 20
IDLE_BYTES = 1 << 30


class ReceivePool:
    """Idle blocks of host memory for received tensors, most recently given back last."""

    def __init__(self, idle_bytes: int = IDLE_BYTES) -> None:
        self._lock = threading.Lock()
        self._idle: list[Any] = []     # numpy uint8 arrays over blocks no tensor uses
        self._idle_bytes = 0
        self._limit = idle_bytes

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized CPU tensor like ``torch.empty(shape, dtype=dtype)`` (Note [receive pool])."""
        numel = 1
        for dim in shape:
            numel *= dim
        nbytes = numel * dtype.itemsize
        if nbytes < POOLED_MIN:
            return torch.empty(shape, dtype=dtype)
        block = self._take(nbytes)
        view = block[:nbytes]
        weakref.finalize(view, self._give_back, block)
        return torch.frombuffer(view, dtype=dtype).view(shape)

    def idle_bytes(self) -> int:
        """Bytes of the blocks that wait for reuse."""
        with self._lock:
            return self._idle_bytes

    def _take(self, nbytes: int) -> Any:
        """The most recently given back idle block that fits ``nbytes`` closely, else a new one."""
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):
                size = self._idle[i].nbytes
                if nbytes <= size <= 2 * nbytes:
                    self._idle_bytes -= size
                    return self._idle.pop(i)
        return torch.empty(nbytes, dtype=torch.uint8).numpy()

    def _give_back(self, block: Any) -> None:
        with self._lock:
            self._idle.append(block)
            self._idle_bytes += block.nbytes
            while self._idle_bytes > self._limit:
                self._idle_bytes -= self._idle.pop(0).nbytes


receive_pool = ReceivePool()
