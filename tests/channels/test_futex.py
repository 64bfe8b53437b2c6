"""Futex wait and wake on words of a shared-memory segment, across threads and processes."""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import threading
import time

import pytest

from ember.channels import futex
from ember._system.shm import Segment, segment_path


def wait_in_child(path: str, timeout_s: float) -> None:
    """Map ``path``, announce readiness in word 1, wait on word 0 and exit 0 if woken in time."""
    segment = Segment.open(path)
    ready = ctypes.c_uint32.from_buffer(segment.mmap, 4)
    ready.value = 1
    futex.wake(futex.word_address(segment.mmap, 4))
    start = time.monotonic()
    woken = futex.wait(futex.word_address(segment.mmap, 0), 0, timeout_s)
    raise SystemExit(0 if woken and time.monotonic() - start < timeout_s else 1)


@pytest.mark.timeout(30)
def test_wait_times_out_while_the_word_is_unchanged() -> None:
    buffer = mmap.mmap(-1, 4096)
    start = time.monotonic()
    assert futex.wait(futex.word_address(buffer, 0), 0, 0.1) is False
    assert time.monotonic() - start >= 0.09


@pytest.mark.timeout(30)
def test_wait_returns_at_once_when_the_word_differs() -> None:
    buffer = mmap.mmap(-1, 4096)
    ctypes.c_uint32.from_buffer(buffer, 8).value = 7
    start = time.monotonic()
    assert futex.wait(futex.word_address(buffer, 8), 6, 10) is True
    assert time.monotonic() - start < 1


@pytest.mark.timeout(30)
def test_wake_wakes_a_waiting_thread() -> None:
    buffer = mmap.mmap(-1, 4096)
    address = futex.word_address(buffer, 0)
    results = []
    waiter = threading.Thread(target=lambda: results.append(futex.wait(address, 0, 20)))
    waiter.start()
    deadline = time.monotonic() + 10
    woken = 0
    while not woken and time.monotonic() < deadline:  # until the thread is parked in the kernel
        woken = futex.wake(address, 1)
    waiter.join()
    assert woken == 1 and results == [True]


@pytest.mark.timeout(30)
def test_wake_reaches_another_process_that_maps_the_segment() -> None:
    segment = Segment.create(segment_path("futextest", "0"), 4096)
    try:
        child = multiprocessing.get_context("spawn").Process(
            target=wait_in_child, args=(segment.path, 20.0))
        child.start()
        ready = ctypes.c_uint32.from_buffer(segment.mmap, 4)
        while ready.value == 0:
            futex.wait(futex.word_address(segment.mmap, 4), 0, 0.1)
        word = ctypes.c_uint32.from_buffer(segment.mmap, 0)
        word.value = 1
        futex.wake(futex.word_address(segment.mmap, 0))
        child.join(20)
        assert child.exitcode == 0
    finally:
        segment.unlink()


def test_word_address_must_be_aligned() -> None:
    with pytest.raises(ValueError, match="not 4-byte aligned"):
        futex.word_address(mmap.mmap(-1, 4096), 2)
