"""TcpChannel between real processes over real sockets (loopback)."""

from __future__ import annotations

import contextlib
import pickle
import socket
import threading
import time

import numpy as np
import pytest

from ember.channels import TcpType, tcp, tcp_receiver, tcp_wire
from ember.channels.shared_memory import SharedMemoryChannel
from ember.channels.tcp import TcpChannel
from ember.channels.tcp_wire import HELLO, WRITER, connect
from ember._system import cluster_auth
from ember.exceptions import (ActorDiedError, AuthenticationError, ChannelBrokenError,
                              ChannelClosedError, ChannelError, ChannelTimeoutError)

from . import peers
from .peers import fingerprint, running

VALUES = [0, "text", None, {"a": [1, 2.5]}, np.arange(10), b"x" * 1000,
          np.ones((3, 4), dtype=np.float32), ValueError("carried as a value")]


@contextlib.contextmanager
def remote_reader(spawn, channel: TcpChannel, index: int, program, *args):
    """Run ``program(reader, *args)`` in a peer that listens for reader ``index``, after
    giving its address to ``channel`` (the rendezvous a compiler does)."""
    addresses = spawn.Queue()
    with running(spawn, peers.listening, channel, index, addresses, program, *args) as process:
        channel.set_reader_address(index, addresses.get(timeout=20))
        yield process


def same(a: list, b: list) -> bool:
    """Equal lists of fingerprints, where exceptions are equal by type and message."""
    return len(a) == len(b) and all(
        (type(x) is type(y) and str(x) == str(y)) if isinstance(x, Exception) else x == y
        for x, y in zip(a, b))


@pytest.mark.timeout(30)
def test_values_arrive_in_order_from_a_writer_in_another_process(spawn) -> None:
    values = VALUES * 10
    channel = TcpChannel(num_readers=1, num_slots=3)
    reader = channel.reader(0)
    reader.attach()      # listens here, in the creator: the copy sent to the writer knows where
    with running(spawn, peers.write_all, channel.writer(), values) as writer:
        got = [fingerprint(reader.read(timeout=20)) for _ in values]
        writer.join(10)
        assert writer.exitcode == 0
    assert same(got, [fingerprint(v) for v in values])
    channel.destroy()


@pytest.mark.timeout(30)
def test_two_readers_in_other_processes_see_every_value_in_order(spawn) -> None:
    values = VALUES * 5
    channel = TcpType().create_channel(num_readers=2, num_slots=2)
    results = [spawn.Queue() for _ in range(2)]
    with contextlib.ExitStack() as stack:
        for i in range(2):
            stack.enter_context(remote_reader(spawn, channel, i, peers.read_fingerprints,
                                              len(values), results[i]))
        peers.write_all(channel.writer(), values)
        for queue in results:
            assert same(queue.get(timeout=20), [fingerprint(v) for v in values])
    channel.destroy()


@pytest.mark.timeout(30)
def test_a_full_reader_ring_times_the_writer_out_and_a_read_makes_room(spawn) -> None:
    channel = TcpChannel(num_readers=1, num_slots=3)
    commands, results = spawn.Queue(), spawn.Queue()
    with remote_reader(spawn, channel, 0, peers.read_on_demand, commands, results):
        writer = channel.writer()
        for i in range(3):
            writer.write(i, timeout=0)
        start = time.monotonic()
        with pytest.raises(ChannelTimeoutError, match="slots hold values that reader 0") as info:
            writer.write(3, timeout=0.3)
        assert time.monotonic() - start >= 0.3
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(ChannelTimeoutError):
            writer.write_nowait(3)
        commands.put("read one")
        assert results.get(timeout=20) == 0
        writer.write(3, timeout=20)            # the retry finds the slot the read freed
        for _ in range(3):
            commands.put("read one")
        assert [results.get(timeout=20) for _ in range(3)] == [1, 2, 3]
        commands.put(None)
    channel.destroy()


@pytest.mark.timeout(60)
def test_a_reader_that_waits_on_another_channel_pays_the_ack_it_owes(spawn, monkeypatch) -> None:
    # Note [deferred acks]: a read owes its ack until its process waits on any channel; with
    # the writer's ask put off for an hour here, only the reader's wait can free the slot
    monkeypatch.setattr(tcp, "_ASK_AFTER_S", 3600.0)
    channel, other = TcpChannel(num_readers=1, num_slots=2), SharedMemoryChannel()
    results = spawn.Queue()
    with remote_reader(spawn, channel, 0, peers.read_one_then_wait, other.reader(0), results):
        writer = channel.writer()
        writer.write(0, timeout=0)
        writer.write(1, timeout=0)
        assert results.get(timeout=20) == 0
        writer.write(2, timeout=20)       # the slot of value 0, freed by the wait on `other`
        assert writer._askers == [None]   # no ask was needed
        other.writer().write("go", timeout=20)
        assert results.get(timeout=20) == "go"
    channel.destroy()
    other.destroy()


@pytest.mark.timeout(60)
def test_a_writer_out_of_credit_asks_a_reader_busy_elsewhere_for_the_ack_it_owes(spawn) -> None:
    channel = TcpChannel(num_readers=1, num_slots=2)
    commands, results = spawn.Queue(), spawn.Queue()
    with remote_reader(spawn, channel, 0, peers.read_on_demand, commands, results):
        writer = channel.writer()
        writer.write(0, timeout=0)
        writer.write(1, timeout=0)
        commands.put("read one")
        assert results.get(timeout=20) == 0   # the reader now waits on a queue, not a channel
        writer.write(2, timeout=20)           # the slot of value 0, freed when the writer asked
        assert writer._askers[0] is not None
        for expected in (1, 2):
            commands.put("read one")
            assert results.get(timeout=20) == expected
        commands.put(None)
    channel.destroy()


@pytest.mark.timeout(120)
def test_1_mib_and_64_mib_arrays_round_trip_intact(spawn) -> None:
    rng = np.random.default_rng(0)
    values = [rng.random(2**20 // 8), rng.integers(0, 255, 64 * 2**20, dtype=np.uint8),
              "small after large", rng.random((512, 256)).astype(np.float32)]
    forth, back = TcpChannel(num_slots=2), TcpChannel(num_slots=2)
    into = back.reader(0)
    into.attach()
    with remote_reader(spawn, forth, 0, peers.echo, back.writer(), len(values)):
        out = forth.writer()
        for value in values:
            start = time.monotonic()
            out.write(value, timeout=20)
            got = into.read(timeout=60)
            if isinstance(value, np.ndarray):
                assert got.dtype == value.dtype and got.shape == value.shape
                np.testing.assert_array_equal(got, value)
                print(f"{value.nbytes / 2**20:.0f} MiB round trip: "
                      f"{(time.monotonic() - start) * 1e3:.1f} ms")
            else:
                assert got == value
    forth.destroy()
    back.destroy()


@pytest.mark.timeout(120)
def test_two_processes_that_write_64_mib_to_each_other_before_reading_do_not_deadlock(
        spawn) -> None:
    # more than the sockets buffer: only an end that takes in what arrives while nobody reads
    # lets both writes finish (Note [tcp receiving])
    forth, back = TcpChannel(num_slots=2), TcpChannel(num_slots=2)
    into = back.reader(0)
    into.attach()
    mine = np.full(64 * 2**20, 1, dtype=np.uint8)
    theirs = np.full(64 * 2**20, 2, dtype=np.uint8)
    results = spawn.Queue()
    with remote_reader(spawn, forth, 0, peers.write_then_read, back.writer(), theirs, results):
        forth.writer().write(mine, timeout=20)
        assert fingerprint(into.read(timeout=60)) == fingerprint(theirs)
        assert results.get(timeout=60) == fingerprint(mine)
    forth.destroy()
    back.destroy()


@pytest.mark.timeout(40)
def test_1_mib_arrays_after_many_small_values_round_trip(spawn) -> None:
    # the reader is hot (it spins) and its socket's buffer still small: a blocking recv of the
    # rest of a value must not wait for the high low-water mark (Note [tcp receiving])
    values = [b"x" * 100] * 3000 + [np.zeros(2**20, dtype=np.uint8)] * 10
    forth, back = TcpChannel(), TcpChannel()
    into = back.reader(0)
    into.attach()
    with remote_reader(spawn, forth, 0, peers.echo, back.writer(), len(values)):
        out = forth.writer()
        for value in values:
            out.write(value, timeout=20)
            assert fingerprint(into.read(timeout=20)) == fingerprint(value)
    forth.destroy()
    back.destroy()


@pytest.mark.timeout(30)
def test_the_rest_of_a_record_is_received_under_the_high_low_water_mark() -> None:
    # a fresh socket (small buffer) at the mark of nobody reading: the blocking recv of the
    # rest of a 1 MiB record must not wait for the mark (Note [tcp receiving])
    server = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(server.getsockname())
    receiver, _ = server.accept()
    inbox = tcp_wire.Inbox(receiver)
    inbox.low_water(tcp_receiver._AWAY_LOW_WATER)
    payload = np.arange(2**20, dtype=np.uint8)
    threading.Thread(target=sender.sendall,
                     args=(tcp_wire.RECORD.pack(tcp_wire.VALUE, payload.nbytes) + payload.tobytes(),),
                     daemon=True).start()
    receiver.settimeout(10)   # a stall fails the test instead of hanging it
    while not inbox.fill():
        time.sleep(0.001)
    assert inbox.record() == (tcp_wire.VALUE, payload.nbytes)
    got = np.empty(payload.nbytes, np.uint8)
    inbox.read_into(memoryview(got))
    np.testing.assert_array_equal(got, payload)
    for sock in (sender, receiver, server):
        sock.close()


@pytest.mark.timeout(30)
def test_a_value_that_arrives_between_reads_is_read_and_acked(spawn) -> None:
    # nobody reads when these arrive: small values wait in the socket for the next read
    channel = TcpChannel(num_slots=2)
    reader = channel.reader(0)
    reader.attach()
    ready = spawn.Queue()
    with running(spawn, peers.write_and_hang, channel.writer(), ["a", "b", "c", "d"], ready):
        time.sleep(0.3)   # the writer fills both slots and waits for credit
        assert [reader.read(timeout=5) for _ in range(4)] == ["a", "b", "c", "d"]
        assert ready.get(timeout=20) == "written"


@pytest.mark.timeout(30)
def test_the_writers_close_drains_then_raises_closed(spawn) -> None:
    channel = TcpChannel(num_readers=1, num_slots=4)
    reader = channel.reader(0)
    reader.attach()
    values = [1, np.arange(5), "three"]
    with running(spawn, peers.write_then_close, channel.writer(), values) as writer:
        writer.join(20)
        assert writer.exitcode == 0
        time.sleep(0.2)     # the writer has closed and exited: every value still comes
        got = [fingerprint(reader.read(timeout=5)) for _ in values]
        assert got == [fingerprint(v) for v in values]
        with pytest.raises(ChannelClosedError, match="was closed"):
            reader.read(timeout=5)
        with pytest.raises(ChannelClosedError):
            reader.read(timeout=0)


@pytest.mark.timeout(30)
def test_a_close_from_a_third_process_drains_then_raises_closed(spawn) -> None:
    channel = TcpChannel(num_readers=1, num_slots=4)
    results, ready = spawn.Queue(), spawn.Queue()
    values = ["a", np.zeros(3), "c"]
    with remote_reader(spawn, channel, 0, peers.read_until_error, results):
        with running(spawn, peers.write_and_hang, channel.writer(), values, ready):
            assert ready.get(timeout=20) == "written"
            channel.close()          # neither the writer nor the reader: asks the listener
            assert results.get(timeout=20) == ([fingerprint(v) for v in values],
                                               "ChannelClosedError")
    channel.close()   # idempotent
    with pytest.raises(ChannelClosedError):
        channel.writer().write(1)


@pytest.mark.timeout(30)
def test_a_close_from_another_process_wakes_a_blocked_reader(spawn) -> None:
    channel = TcpChannel()
    reader = channel.reader(0)
    reader.attach()
    with running(spawn, peers.close_after, pickle.loads(pickle.dumps(channel)), 0.3):
        start = time.monotonic()
        with pytest.raises(ChannelClosedError, match="was closed") as info:
            reader.read(timeout=20)
        assert time.monotonic() - start < 5
        assert isinstance(info.value, ChannelError)


@pytest.mark.timeout(30)
def test_a_close_from_another_process_wakes_a_blocked_writer(spawn) -> None:
    channel = TcpChannel(num_readers=1, num_slots=1)
    reader, writer = channel.reader(0), channel.writer()
    reader.attach()
    writer.write(0)                        # the one slot is taken: the next write blocks
    with running(spawn, peers.close_after, pickle.loads(pickle.dumps(channel)), 0.3):
        start = time.monotonic()
        with pytest.raises(ChannelClosedError, match="was closed"):
            writer.write(1, timeout=20)
        assert time.monotonic() - start < 5
    assert reader.read(timeout=5) == 0     # written before the close: still delivered
    with pytest.raises(ChannelClosedError):
        reader.read(timeout=5)


@pytest.mark.timeout(30)
def test_a_sigkilled_writer_breaks_the_reader_within_seconds(spawn) -> None:
    channel = TcpChannel()
    reader = channel.reader(0)
    reader.attach()
    ready = spawn.Queue()
    with running(spawn, peers.write_and_hang, channel.writer(), ["last words"], ready) as writer:
        assert ready.get(timeout=20) == "written"
        assert reader.read(timeout=20) == "last words"
        killer = threading.Timer(0.3, writer.kill)
        killer.start()
        start = time.monotonic()
        with pytest.raises(ChannelBrokenError, match="connection ended without a close") as info:
            reader.read(timeout=None)
        assert time.monotonic() - start < 3
        assert not isinstance(info.value, ActorDiedError)   # the engine's word, not a channel's
        killer.join()


@pytest.mark.timeout(30)
def test_a_sigkilled_reader_breaks_the_blocked_writer_within_seconds(spawn) -> None:
    channel = TcpChannel(num_readers=2, num_slots=2)
    ready, results = spawn.Queue(), spawn.Queue()
    values = [np.zeros(3), np.ones(3)]
    with remote_reader(spawn, channel, 1, peers.read_and_hang, 0, ready) as reader1, \
            remote_reader(spawn, channel, 0, peers.read_until_error, results):
        assert ready.get(timeout=20) == "read"
        writer = channel.writer()
        for value in values:
            writer.write(value, timeout=20)      # reader 1 reads nothing: its ring is full
        killer = threading.Timer(0.3, reader1.kill)
        killer.start()
        start = time.monotonic()
        with pytest.raises(ChannelBrokenError, match="a reader of .* is gone"):
            writer.write(2, timeout=None)
        assert time.monotonic() - start < 3
        killer.join()
        channel.close()
        assert results.get(timeout=20) == ([fingerprint(v) for v in values],
                                           "ChannelClosedError")


@pytest.mark.timeout(60)
def test_wrong_keys_and_garbage_are_refused_and_the_channel_still_works(spawn) -> None:
    channel = TcpChannel(num_slots=2)
    reader = channel.reader(0)
    reader.attach()
    address = channel.addresses[0]
    with pytest.raises(AuthenticationError):
        cluster_auth.connect(address, b"k" * 32, "a wrong key", timeout=5)
    silent = socket.create_connection(address)          # says nothing: holds no one up
    garbage = socket.create_connection(address)
    garbage.settimeout(10)
    assert len(garbage.recv(64)) == 32                    # the server's nonce
    garbage.sendall(b"\x00garbage" * 16)
    with contextlib.suppress(ConnectionResetError):       # a reset: it left bytes unread
        assert garbage.recv(64) == b""                    # dropped after a wrong proof
    other = HELLO.pack(WRITER, b"\x01" * 16, 0)           # passes the handshake, wrong channel
    with pytest.raises(ConnectionError):
        connect(address, other, timeout=5)
    values = ["still", np.arange(4), "works"]
    with running(spawn, peers.write_all, channel.writer(), values):
        got = [fingerprint(reader.read(timeout=20)) for _ in values]
    assert got == [fingerprint(v) for v in values]
    silent.close()
    garbage.close()
    channel.destroy()


@pytest.mark.timeout(30)
def test_read_timeouts_are_timeout_errors_and_a_retry_reads(spawn) -> None:
    channel = TcpChannel()
    reader = channel.reader(0)
    reader.attach()
    writer = channel.writer()
    writer.attach()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no new value was written") as info:
        reader.read(timeout=0.25)
    assert 0.25 <= time.monotonic() - start < 5
    assert isinstance(info.value, ChannelTimeoutError)
    with pytest.raises(ChannelTimeoutError):
        reader.read_nowait()
    writer.write("late")
    assert reader.read(timeout=5) == "late"
    channel.destroy()


@pytest.mark.timeout(30)
def test_ping_pong_between_processes_with_pickled_handles(spawn) -> None:
    forth, back = TcpChannel(), TcpChannel()
    into = back.reader(0)
    into.attach()
    with remote_reader(spawn, forth, 0, peers.echo, back.writer(), 300):
        out = forth.writer()
        samples = []
        for i in range(300):
            start = time.perf_counter()
            out.write(i, timeout=20)
            assert into.read(timeout=20) == i
            samples.append(time.perf_counter() - start)
    print(f"TcpChannel ping-pong p50: {sorted(samples)[150] * 1e6:.0f} us")
    forth.destroy()
    back.destroy()


def test_reader_index_out_of_range() -> None:
    channel = TcpChannel(num_readers=2)
    with pytest.raises(ValueError, match="reader index 2 is out of range of 2"):
        channel.reader(2)
