"""Test harness: a pool of spawned processes that share one TCPStore and run scenarios as ranks."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import traceback
from collections.abc import Callable

import pytest

from ember.gpu.communicator import connect_store, host_store

Scenario = Callable[[int, int, object], object]  # (rank, world, store) -> picklable result


def _store(rank: int, addresses: "mp.Queue", world: int):
    """Rank 0 hosts the store and hands its address to the others."""
    if rank == 0:
        store, address = host_store()
        for _ in range(world - 1):
            addresses.put(address)
        return store
    return connect_store(addresses.get(timeout=60))


def _worker(rank: int, world: int, addresses: "mp.Queue", commands: "mp.Queue",
            results: "mp.Queue") -> None:
    """Join the store, then run each scenario sent on ``commands`` and report its result or traceback.

    Results are pickled here so that tensors travel inline, not as shared-memory handles.
    """
    store = _store(rank, addresses, world)
    while (scenario := commands.get()) is not None:
        try:
            results.put((rank, pickle.dumps(scenario(rank, world, store)), None))
        except BaseException:
            results.put((rank, None, traceback.format_exc()))


class Ranks:
    """``world`` spawned processes sharing one store, running scenarios on request."""

    def __init__(self, world: int) -> None:
        ctx = mp.get_context("spawn")
        self.world = world
        self._results = ctx.Queue()
        self._addresses = ctx.Queue()  # kept: a child that starts late must still find it
        self._commands = [ctx.Queue() for _ in range(world)]
        self._procs = [ctx.Process(target=_worker, daemon=True,
                                   args=(rank, world, self._addresses, self._commands[rank],
                                         self._results))
                       for rank in range(world)]
        for proc in self._procs:
            proc.start()

    def run(self, scenario: Scenario, timeout_s: float = 60.0) -> list:
        """Run ``scenario`` (a module-level function) on every rank; results in rank order."""
        for commands in self._commands:
            commands.put(scenario)
        out: dict[int, object] = {}
        errors = []
        try:
            for _ in range(self.world):
                rank, value, error = self._results.get(timeout=timeout_s)
                if error:
                    errors.append(f"rank {rank} failed:\n{error}")
                else:
                    out[rank] = pickle.loads(value)
        except queue.Empty:
            pytest.fail(f"scenario {scenario.__name__} did not finish in {timeout_s} s")
        if errors:
            pytest.fail("\n".join(errors))
        return [out[rank] for rank in range(self.world)]

    def close(self) -> None:
        """Stop every rank; kill one that does not stop."""
        for commands in self._commands:
            commands.put(None)
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
