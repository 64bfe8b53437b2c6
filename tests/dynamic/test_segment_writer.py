"""A pulled object's buffer: its memory comes back for the next pull once the value is gone,
never while a value still lives in it (Note [recycled pulls]), and nothing is left behind."""

from __future__ import annotations

import gc
import glob
import os

import numpy as np
import pytest

from ember._system import shm
from ember.dynamic.objects.segment_writer import SegmentWriter

SIZE = 16 * 1024 * 1024


def _spares() -> list[str]:
    return glob.glob(os.path.join(shm.SHM_DIR, f"ember_{shm.session_id()}_*"))


def _address(view) -> int:
    return np.asarray(view, dtype=np.uint8).__array_interface__["data"][0]


@pytest.fixture
def writer():
    assert _spares() == []
    segments = SegmentWriter()
    yield segments
    segments.close()
    gc.collect()
    assert _spares() == [], "the writer left a segment behind"


@pytest.mark.timeout(60)
def test_buffer_of_a_value_that_is_gone_is_reused(writer):
    first = writer.receive_buffer(SIZE)
    first[:] = b"\x01" * SIZE
    value = np.frombuffer(first.toreadonly(), dtype=np.uint8)
    where = _address(first)
    del first
    assert value[-1] == 1
    del value
    second = writer.receive_buffer(SIZE - 4096)     # a little smaller still fits
    assert _address(second) == where
    assert second[0] == 1 and second[-1] == 1     # the same pages, not fresh zeroed ones
    assert len(second) == SIZE - 4096
    assert _spares() == []      # no file names a pull's buffer


@pytest.mark.timeout(60)
def test_buffer_is_not_reused_while_a_value_lives_in_it(writer):
    first = writer.receive_buffer(SIZE)
    first[:] = b"\x01" * SIZE
    kept = np.frombuffer(first.toreadonly(), dtype=np.uint8)[::1024]   # a view keeps it
    del first
    second = writer.receive_buffer(SIZE)
    second[:] = b"\x02" * SIZE
    assert _address(second) != _address(kept)
    assert set(kept.tolist()) == {1}
    where = {_address(second), _address(kept)}
    del second, kept
    third = writer.receive_buffer(SIZE)      # one of the two comes back, the other is closed
    assert _address(third) in where
    assert _spares() == []
    del third
