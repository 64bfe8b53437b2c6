"""Fixtures of the engine tests: one real local cluster per test module, and shared helpers."""

from __future__ import annotations

import glob
import os

import pytest

import ember
from ember._system import shm


@pytest.fixture(scope="module")
def cluster():
    """A running ember, shut down after the module."""
    info = ember.init(num_cpus=2)
    yield info
    ember.shutdown()


def channel_files() -> list[str]:
    """The channel segments of the current session in /dev/shm."""
    return glob.glob(os.path.join(shm.SHM_DIR, f"ember_{shm.session_id()}_chan_*"))


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
