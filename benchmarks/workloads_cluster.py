"""Workloads across real nodes: a 3-node cluster started on this machine with the runtime's own
command line (``ember start`` / ``ray start``), nodes A (head), B and C, one CPU each, and a
driver on the head. Each reference (a raw socket copy, a raw TCP ping-pong) is measured in the
same run, between two processes over the same loopback link, its samples taken in turn with
the row's."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Callable, Iterator

import numpy as np

from benchmarks.harness import (GB, Config, Row, dag_module, interleaved_latencies, latency_row,
                                rate_row, workload)
from benchmarks.workloads_compiled import SMALL
from benchmarks.workloads_xnode import peer_process, raw_pingpong

SIZE = 100_000_000
NODES = ({"A": 1}, {"B": 1}, {"C": 1})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_commands(runtime: str, port: int) -> list[list[str]]:
    import json
    commands = []
    for index, resources in enumerate(NODES):
        if runtime == "ray":
            where = (["--head", f"--port={port}", "--include-dashboard=false"] if index == 0
                     else [f"--address=127.0.0.1:{port}"])
            commands.append([shutil.which("ray") or "ray", "start", *where, "--num-cpus=1",
                             f"--resources={json.dumps(resources)}", "--disable-usage-stats"])
        else:
            where = ["--head", "--port", str(port)] if index == 0 else [
                "--address", f"127.0.0.1:{port}"]
            commands.append([sys.executable, "-m", "ember.cli", "start", *where,
                             "--num-cpus", "1", "--resources", json.dumps(resources)])
    return commands


@contextlib.contextmanager
def three_nodes(rt: ModuleType) -> Iterator[None]:
    """A 3-node cluster of ``rt`` on this machine (HOME in a temporary folder), the driver
    connected to it; everything stopped afterwards."""
    runtime = rt.__name__
    home = tempfile.mkdtemp(prefix=f"bench-{runtime}-home-")
    env = {**os.environ, "HOME": home, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("EMBER_AUTH_TOKEN", None)
    port = _free_port()
    old_home = os.environ.get("HOME")
    try:
        for command in _start_commands(runtime, port):
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
        os.environ["HOME"] = home
        rt.init(address=f"127.0.0.1:{port}")
        yield
    finally:
        with contextlib.suppress(Exception):
            rt.shutdown()
        stop = ["ray", "stop", "--force"] if runtime == "ray" else [
            sys.executable, "-m", "ember.cli", "stop"]
        subprocess.run(stop, env=env, capture_output=True, timeout=120)
        if old_home is not None:
            os.environ["HOME"] = old_home
        shutil.rmtree(home, ignore_errors=True)


def _maker(rt: ModuleType):
    @rt.remote(resources={"B": 0.5}, num_cpus=0)
    class Maker:
        def make(self, seed: int) -> list:
            self.ref = rt.put(np.full(SIZE // 8, float(seed)))
            return [self.ref]

    return Maker


def _send_on_request(conn: socket.socket) -> None:
    """Send 100 MB each time a byte arrives (the socket copy's other process)."""
    data = memoryview(np.ones(SIZE, dtype=np.uint8))
    while conn.recv(1):
        conn.sendall(data)


@contextlib.contextmanager
def socket_copy() -> Iterator[Callable[[], float]]:
    """A copy of 100 MB from another process over loopback TCP into a reused buffer, received
    with MSG_WAITALL (the raw reference of xnode_put_get_100mb); each call returns its GB/s."""
    with peer_process(_send_on_request) as sock:
        view = memoryview(np.empty(SIZE, dtype=np.uint8))

        def copy() -> float:
            start = time.perf_counter()
            sock.sendall(b"x")
            got = 0
            while got < SIZE:
                got += sock.recv_into(view[got:], SIZE - got, socket.MSG_WAITALL)
            return SIZE / GB / (time.perf_counter() - start)
        copy()
        yield copy


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 3)


@workload("xnode_put_get_100mb", "socket_copy_100mb", "cg_roundtrip_xnode",
          "tcp_pingpong_raw_xnode", "core_tasks_async_xnode", needs_init=False)
def across_nodes(rt: ModuleType, cfg: Config) -> list[Row]:
    """A 100 MB array made on node B and got by the driver on A (GB/s, beside a raw socket
    copy); a compiled graph whose actor is on node B (p50, beside a raw TCP ping-pong); 10k
    no-op tasks over the 3 nodes (tasks/s). Each reference is sampled in turn with its row."""
    rows = []
    with socket_copy() as copy, raw_pingpong() as round_trip, three_nodes(rt):
        maker = _maker(rt).remote()
        speeds, copies = [], []
        warm_up = cfg.n(3, 1)   # the first pulls make the memory that later ones reuse
        for seed in range(warm_up + cfg.n(7, 2)):
            [ref] = rt.get(maker.make.remote(seed))
            copies.append(copy())
            start = time.perf_counter()
            value = rt.get(ref)
            speeds.append(SIZE / GB / (time.perf_counter() - start))
            assert value[0] == seed
            del value, ref
        reference = _median(copies[warm_up:])
        rows.append(Row("socket_copy_100mb", "GB/s", reference,
                        note="reference: 100 MB over loopback TCP into a reused buffer, one "
                             "before each get"))
        rows.append(Row("xnode_put_get_100mb", "GB/s", _median(speeds[warm_up:]),
                        note=f"driver on the head gets an array put on node B, median after "
                             f"{warm_up} warm-up gets; raw socket copy {reference} GB/s in "
                             f"the same run"))

        @rt.remote(resources={"B": 0.5}, num_cpus=0)
        class Echo:
            def echo(self, x):
                return x
        echo = Echo.remote()
        rt.get(echo.echo.remote(1))
        with dag_module(rt).InputNode() as inp:
            dag = echo.echo.bind(inp)
        cdag = dag.experimental_compile()
        try:
            samples = interleaved_latencies(
                {"raw": round_trip, "cg": lambda: rt.get(cdag.execute(SMALL))},
                cfg.n(300, 30), cfg.n(3000, 300))
        finally:
            cdag.teardown()
        raw = latency_row("tcp_pingpong_raw_xnode", samples["raw"])
        raw.note = "reference: 100 bytes echoed by another process over loopback, interleaved"
        row = latency_row("cg_roundtrip_xnode", samples["cg"])
        row.note = f"driver on A, actor on B; raw TCP ping-pong p50 {raw.p50_us} us"
        rows += [row, raw]

        @rt.remote(num_cpus=1)
        def noop():
            return None
        n = cfg.n(10_000, 1000)
        rows.append(rate_row("core_tasks_async_xnode", "tasks/s", n,
                             lambda: rt.get([noop.remote() for _ in range(n)]), cfg.n(3, 1)))
    return rows
