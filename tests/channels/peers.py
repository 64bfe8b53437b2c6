"""Programs that the peer processes of the channel tests run, and a helper to start them."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import zlib
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np

from ember.channels import Channel, ChannelReader, ChannelWriter


@contextlib.contextmanager
def running(ctx: multiprocessing.context.SpawnContext, target: Callable[..., None],
            *args: Any) -> Iterator[multiprocessing.process.BaseProcess]:
    """Run ``target(*args)`` in a new process; kill and reap it if it is still running at exit."""
    process = ctx.Process(target=target, args=args, daemon=True)
    process.start()
    try:
        yield process
    finally:
        if process.is_alive():
            process.kill()
        process.join(10)


def echo_each(ctx: multiprocessing.context.SpawnContext, forth: Channel, back: Channel,
              values: list[Any], check: Callable[[Any, Any], None]) -> None:
    """Send each of ``values`` to an echo process through ``forth`` and read it back from
    ``back``, one at a time; ``check(value, got)`` each (and drop both before the next)."""
    with running(ctx, echo, forth.reader(0), back.writer(), len(values)):
        writer, reader = forth.writer(), back.reader(0)
        for value in values:
            writer.write(value, timeout=20)
            check(value, reader.read(timeout=20))


def fingerprint(value: Any) -> Any:
    """Return a small picklable stand-in of ``value`` that tells values apart (arrays by CRC)."""
    if isinstance(value, np.ndarray):
        return ("array", value.shape, str(value.dtype), zlib.crc32(value.tobytes()))
    return value


def write_all(writer: ChannelWriter, values: list[Any]) -> None:
    """Write ``values`` in order."""
    for value in values:
        writer.write(value, timeout=20)


def read_fingerprints(reader: ChannelReader, count: int, results: multiprocessing.Queue) -> None:
    """Read ``count`` values and put the list of their fingerprints on ``results``."""
    results.put([fingerprint(reader.read(timeout=20)) for _ in range(count)])


def echo(reader: ChannelReader, writer: ChannelWriter, count: int) -> None:
    """Write back every value read, ``count`` times."""
    for _ in range(count):
        writer.write(reader.read(timeout=20), timeout=20)


def write_and_hang(writer: ChannelWriter, values: list[Any], ready: multiprocessing.Queue) -> None:
    """Write ``values``, say so on ``ready``, then wait to be killed."""
    write_all(writer, values)
    ready.put("written")
    time.sleep(60)


def read_and_hang(reader: ChannelReader, count: int, ready: multiprocessing.Queue) -> None:
    """Attach, read ``count`` values, say so on ``ready``, then wait to be killed."""
    reader.attach()
    for _ in range(count):
        reader.read(timeout=20)
    ready.put("read")
    time.sleep(60)


def close_after(channel: Channel, delay_s: float) -> None:
    """Close ``channel`` after ``delay_s`` seconds."""
    time.sleep(delay_s)
    channel.close()


def read_until_error(reader: ChannelReader, results: multiprocessing.Queue) -> None:
    """Read until an error, then put (values read, name of the error type) on ``results``."""
    values = []
    try:
        while True:
            values.append(fingerprint(reader.read(timeout=20)))
    except Exception as exc:  # noqa: BLE001 - the test checks which error it was
        results.put((values, type(exc).__name__))


def listening(channel: Channel, index: int, addresses: multiprocessing.Queue,
              program: Callable[..., None], *args: Any) -> None:
    """Prepare reader ``index`` of ``channel`` in this process, put its address on
    ``addresses``, then run ``program(reader, *args)`` (Note [tcp channel rendezvous])."""
    addresses.put(channel.prepare_reader(index))
    program(channel.reader(index), *args)


def read_on_demand(reader: ChannelReader, commands: multiprocessing.Queue,
                   results: multiprocessing.Queue) -> None:
    """Read one value for each command, until a None, putting each fingerprint on ``results``."""
    while commands.get(timeout=20) is not None:
        results.put(fingerprint(reader.read(timeout=20)))


def read_one_then_wait(reader: ChannelReader, other: ChannelReader,
                       results: multiprocessing.Queue) -> None:
    """Read one value, put it on ``results``, then wait to read ``other`` and put that too."""
    results.put(fingerprint(reader.read(timeout=20)))
    results.put(fingerprint(other.read(timeout=20)))


def write_then_close(writer: ChannelWriter, values: list[Any]) -> None:
    """Write ``values`` in order, then close the channel."""
    write_all(writer, values)
    writer.close()


def write_then_read(reader: ChannelReader, writer: ChannelWriter, value: Any,
                    results: multiprocessing.Queue) -> None:
    """Write ``value``, then read one value and put its fingerprint on ``results``."""
    writer.write(value, timeout=20)
    results.put(fingerprint(reader.read(timeout=60)))
