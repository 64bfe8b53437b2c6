"""Cross-node workloads on one machine: a compiled graph over TCP channels (forced on loopback),
beside a raw TCP ping-pong between two processes measured in the same run."""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
from types import ModuleType
from typing import Callable, Iterator

from benchmarks.harness import (ACTOR_OPTIONS, Config, Echo, Row, interleaved_latencies,
                                latency_row, sample_latencies, spawned, workload)
from benchmarks.workloads_compiled import SMALL, linear_pipeline


@contextlib.contextmanager
def peer_process(serve: Callable[[socket.socket], None]) -> Iterator[socket.socket]:
    """A socket connected over loopback TCP to a fresh process running ``serve(conn)``
    (a module-level function: the process is spawned), the other end of a raw reference."""
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_accept_one, args=(serve, ports), daemon=True)
    server.start()
    try:
        sock = socket.create_connection(("127.0.0.1", ports.get(timeout=30)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock:
            yield sock
    finally:
        server.kill()
        server.join(10)


def _accept_one(serve: Callable[[socket.socket], None], port_out: multiprocessing.Queue) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port_out.put(server.getsockname()[1])
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    serve(conn)


def _echo(conn: socket.socket) -> None:
    """Echo every 100-byte message of one connection (the raw reference's other process)."""
    buf = bytearray(len(SMALL))
    while True:
        got = 0
        while got < len(buf):
            n = conn.recv_into(memoryview(buf)[got:])
            if not n:
                return
            got += n
        conn.sendall(buf)


@contextlib.contextmanager
def raw_pingpong() -> Iterator[Callable[[], None]]:
    """One round trip of 100 bytes to an echo process over loopback TCP (the raw reference)."""
    with peer_process(_echo) as sock:
        buf = memoryview(bytearray(len(SMALL)))

        def round_trip() -> None:
            sock.sendall(SMALL)
            got = 0
            while got < len(SMALL):
                got += sock.recv_into(buf[got:])
        yield round_trip


@workload("cg_roundtrip_tcp", "tcp_pingpong_raw")
def cg_roundtrip_tcp(rt: ModuleType, cfg: Config) -> list[Row]:
    """cg_roundtrip_small over TCP channels (``_channel_type=TcpType()``) on loopback; p50/p99
    µs, beside a raw 100-byte TCP ping-pong between two processes."""
    if rt.__name__ == "ray":
        with raw_pingpong() as round_trip:
            raw = latency_row("tcp_pingpong_raw", sample_latencies(
                round_trip, cfg.n(500, 50), cfg.n(5000, 500)))
        return [Row("cg_roundtrip_tcp", "us", None,
                    note="skipped: Ray's channels cannot be forced onto TCP on one node"), raw]
    from ember.channels import TcpType
    with raw_pingpong() as round_trip, spawned(rt, Echo, 1, **ACTOR_OPTIONS) as actors:
        cdag = linear_pipeline(rt, actors).experimental_compile(_channel_type=TcpType())
        try:
            assert rt.get(cdag.execute(SMALL)) == SMALL
            samples = interleaved_latencies(
                {"raw": round_trip, "cg": lambda: rt.get(cdag.execute(SMALL))},
                cfg.n(500, 50), cfg.n(5000, 500))
        finally:
            cdag.teardown()
    raw = latency_row("tcp_pingpong_raw", samples["raw"])
    raw.note = "reference: 100 bytes echoed by another process over loopback TCP, interleaved"
    row = latency_row("cg_roundtrip_tcp", samples["cg"])
    row.note = (f"1 actor echoing 100 bytes over TCP channels on loopback; raw TCP ping-pong "
                f"p50 {raw.p50_us} us in the same run")
    return [row, raw]
