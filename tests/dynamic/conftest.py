"""Fixtures of the dynamic-layer tests: one real local cluster per test module."""

from __future__ import annotations

import time

import pytest

import ember
from ember._system.process import pid_alive


@pytest.fixture(scope="module")
def cluster():
    """A running ember with 2 CPUs and a custom resource, shut down after the module."""
    info = ember.init(num_cpus=2, num_gpus=0, resources={"custom": 1})
    yield info
    ember.shutdown()


class Processes:
    """Waits on processes by pid: whether one runs, and for one to end."""

    alive = staticmethod(pid_alive)  # whether ``pid`` runs (a zombie does not count)

    @staticmethod
    def wait_until(condition, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` for ``condition()``; fail the test past it."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.02)

    def wait_gone(self, pid: int, timeout: float = 10.0) -> None:
        """Wait for ``pid`` to end; fail the test past ``timeout``."""
        self.wait_until(lambda: not self.alive(pid), timeout)


@pytest.fixture
def procs() -> Processes:
    """``procs.alive(pid)``, ``procs.wait_gone(pid)``, ``procs.wait_until(condition)``."""
    return Processes()
