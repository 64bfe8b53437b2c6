"""A bare TcpChannel between two processes, no runtime: 100-byte ping-pong p50, then 1 MiB and
64 MiB uint8 arrays echoed there and back (p50 round trip, GB/s counting both ways).

    EMBER_AUTH_TOKEN=any python -m benchmarks.tcp_channel_bare   # from the repository root

(the token stands in for a session's secret in the handshake; both processes inherit it).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time

import numpy as np

from ember.channels.tcp import TcpChannel


def _echo(forth: TcpChannel, back: TcpChannel, addresses: multiprocessing.Queue,
          count: int) -> None:
    """Listen for reader 0 of ``forth`` here, then echo ``count`` values into ``back``."""
    addresses.put(forth.prepare_reader(0))
    reader, writer = forth.reader(0), back.writer()
    for _ in range(count):
        writer.write(reader.read())


def main() -> None:
    """Print the three measurements."""
    small, large = b"x" * 100, [np.zeros(2**20, np.uint8), np.zeros(64 * 2**20, np.uint8)]
    n_small, n_large = 3000, {2**20: 20, 64 * 2**20: 5}
    forth, back = TcpChannel(), TcpChannel()
    into = back.reader(0)
    into.attach()
    ctx = multiprocessing.get_context("spawn")
    addresses = ctx.Queue()
    peer = ctx.Process(target=_echo, daemon=True,
                       args=(forth, back, addresses, n_small + sum(n_large.values())))
    peer.start()
    forth.set_reader_address(0, addresses.get(timeout=30))
    out = forth.writer()
    samples = []
    for _ in range(n_small):
        start = time.perf_counter()
        out.write(small)
        into.read()
        samples.append(time.perf_counter() - start)
    print(f"small p50 {statistics.median(samples[500:]) * 1e6:.1f} us")
    for value in large:
        samples = []
        for _ in range(n_large[value.nbytes]):
            start = time.perf_counter()
            out.write(value)
            del_me = into.read()
            samples.append(time.perf_counter() - start)
            del del_me
        p50 = statistics.median(samples[1:])
        print(f"{value.nbytes >> 20} MiB round trip p50 {p50 * 1e3:.2f} ms, "
              f"{2 * value.nbytes / p50 / 1e9:.2f} GB/s (both ways)")
    peer.join(30)


if __name__ == "__main__":
    main()
