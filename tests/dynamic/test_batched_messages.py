"""Batched messages (Note [batched messages] in messaging.py): what the I/O thread's handlers
send during one drain travels to each peer as one tagged batch, in order; a lone answer, and a
send from another thread, do not wait."""

from __future__ import annotations

import logging
import pickle
import secrets
import shutil
import struct
import tempfile
import threading
from pathlib import Path

import pytest
import zmq

from ember._system.auth import TAG_SIZE, MessageKey
from ember._system.cluster_auth import TOKEN_ENV, token_key
from ember.dynamic.rpc.messaging import Endpoint

TOKEN = secrets.token_hex(16)


def header(kind: str, *fields) -> bytes:
    return pickle.dumps((kind, *fields), protocol=5)


def batch(*headers: bytes) -> bytes:
    """A batch's body: 0x00, then each header after its 4-byte little-endian length."""
    return b"\x00" + b"".join(struct.pack("<I", len(h)) + h for h in headers)


class Wire:
    """An Endpoint under test, and a raw PUSH to it and PULL from it."""

    def __init__(self, folder: Path) -> None:
        self.key = MessageKey(token_key(TOKEN))
        self.endpoint = Endpoint(f"ipc://{folder}/endpoint.sock", "test")
        context = zmq.Context.instance()
        self.address = f"ipc://{folder}/raw.sock"
        self.pull = context.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.bind(self.address)
        self.push = context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.connect(self.endpoint.address)

    def send(self, body: bytes, key: MessageKey | None = None) -> None:
        self.push.send(body + (key or self.key).tag(body))

    def receive(self) -> bytes:
        """The body of the next message the endpoint sent; its tag must check out."""
        assert self.pull.poll(10_000), "no message within 10 s"
        data = self.pull.recv()
        body, tag = data[:-TAG_SIZE], data[-TAG_SIZE:]
        assert self.key.check(body, (), tag), "its tag is bad"
        return body

    def close(self) -> None:
        self.endpoint.stop()
        self.push.close()
        self.pull.close()


@pytest.fixture
def wire(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    folder = Path(tempfile.mkdtemp(prefix="ember-batch-", dir="/tmp"))
    w = Wire(folder)
    w.endpoint.on("ping", lambda n, to: w.endpoint.send(to, "pong", n))
    w.endpoint.start()
    yield w
    w.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(30)
def test_a_burst_of_answers_is_one_batch_in_order_and_a_lone_answer_is_plain(wire):
    wire.send(batch(*(header("ping", n, wire.address) for n in range(10))))
    body = wire.receive()
    assert body == batch(*(header("pong", n) for n in range(10)))
    wire.send(header("ping", 10, wire.address))
    assert wire.receive() == header("pong", 10)


@pytest.mark.timeout(30)
def test_a_send_from_another_thread_goes_after_what_the_io_thread_holds(wire):
    ep = wire.endpoint

    def relay(to: str) -> None:
        ep.send(to, "first")
        other = threading.Thread(target=ep.send, args=(to, "second"))
        other.start()
        other.join()
        ep.send(to, "third")

    ep.on("relay", relay)
    wire.send(header("relay", wire.address))
    got = [pickle.loads(wire.receive()) for _ in range(3)]
    assert got == [("first",), ("second",), ("third",)]


@pytest.mark.timeout(30)
def test_bad_batches_are_dropped_and_a_bad_message_in_a_batch_drops_alone(wire, caplog):
    caplog.set_level(logging.WARNING, logger="ember.dynamic.rpc.messaging")
    ping = header("ping", 1, wire.address)
    wire.send(batch(ping), key=MessageKey(secrets.token_bytes(32)))   # another key's tag
    wire.send(batch(ping)[:-1])                                       # runs past its end
    wire.send(batch(b"\x80\x05garbage", ping, header("no_such_kind")))
    assert pickle.loads(wire.receive()) == ("pong", 1)
    wire.send(header("ping", 2, wire.address))
    assert pickle.loads(wire.receive()) == ("pong", 2)
    assert not wire.pull.poll(200), "a dropped message was answered"
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 4


@pytest.mark.timeout(30)
def test_a_send_with_hold_false_leaves_at_once_after_what_is_held(wire):
    ep = wire.endpoint

    def two(to: str) -> None:
        ep.send(to, "held")
        ep.send(to, "now", hold=False)
        ep.send(to, "after")

    ep.on("two", two)
    wire.send(header("two", wire.address))
    assert [wire.receive() for _ in range(3)] == [header("held"), header("now"), header("after")]
