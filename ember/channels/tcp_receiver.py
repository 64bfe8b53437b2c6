"""One reader of a TCP channel in its own process: the listener, the ring, and who receives.

``prepare`` makes the end (Note [tcp channel rendezvous] in tcp.py). Its background thread
accepts the writer's connection and closes; a blocked ``read`` receives in its own thread
(Note [tcp receiving]). Handshakes run on short-lived threads of their own, so a silent or
garbage peer never stalls the end, and the listener keeps serving after dropping it.

Note [tcp receiving]
~~~~~~~~~~~~~~~~~~~~
A value should cost its reader one wake-up at most: the kernel's, of the thread that reads. A
thread that receives and then wakes the reader costs a second hand-off (~25-30 us on a small
VM), so the reader's own thread receives. A ``read`` that finds the ring empty takes the
receive lock and (1) takes in what has arrived, with one recv that does not wait; (2) if
nothing came, polls that way for a moment, yielding the core between tries (SPIN_S, or
HOT_SPIN_S when its last wait ended within that: Note [channel waiting] in shared_memory.py,
for the same reason: waking a halted vCPU costs tens of microseconds); (3) then waits in poll()
on the socket and on an eventfd that every state change (a close from here or from another
process, the end breaking) is written to, so a blocked read wakes at once.

The background thread accepts connections, serves close requests (the drain of Note [tcp
credits] in tcp.py is its own) and watches the data socket while nobody reads, so that a writer
with credit never waits for a ``read``: two loops that each write a 64 MiB value to the other
before reading cannot deadlock, and a dead writer is seen without a reader. It must not be
woken by the small values that a reader is about to take itself (that is the hand-off again,
and on a busy machine a reply often lands while the reader is between two reads), so:

- while nobody holds the receive lock, the socket's SO_RCVLOWAT is _AWAY_LOW_WATER: poll()
  reports it readable only once that much is waiting (a large value, or many), or at EOF or an
  error, which the kernel reports whatever the low-water mark. A recv that does not wait
  returns whatever is there; a blocking one would wait for the mark, and can wait for ever
  (the window may close before it is reached), so the holder lowers it to 1 before any
  blocking recv or poll() and puts it back before it releases the lock. The mark is small
  enough (32 KiB) that setting it never shrinks the window (tcp_set_rcvlowat clamps the window
  to a mark whose buffer space exceeds the socket's);
- the thread's epoll registration of the socket is EPOLLONESHOT. A read that is about to wait in
  poll() disarms it, and arms it again after releasing the lock. A wake-up of the thread that finds the lock held sets ``_missed`` and
  tries the lock once more: either that succeeds, or the holder, which looks at ``_missed``
  after its release, arms it again. So no arrival is left unwatched, and a read that finds its
  value already there costs no epoll or setsockopt call at all.

A thread that finds the lock held (the background thread, or another reading thread) waits on
the ring's condition, which a receive's append and the lock's release signal; waiters are
counted (``_waiting``) so that nobody takes the condition's lock when none waits.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import weakref
from collections import deque

import numpy

from ember.channels import spin, tcp_wire
from ember.channels.tcp_wire import (ADMITTED, ASKER, CLOSE, CLOSED, CLOSER, HELLO, VALUE, WRITER,
                                     Inbox)
from ember.exceptions import ChannelClosedError, ChannelTimeoutError

OPEN, CLOSING, CLOSED_STATE, BROKEN = range(4)
_QUIET_S = 0.05      # a close from elsewhere still takes in what arrives until this long a lull
_CLOSING_WAIT_S = 1.0   # how long a read that tries once waits for a close to take that in
_LARGE = 64 * 1024   # values this large are received into numpy memory (no zero-fill)
_AWAY_LOW_WATER = 32 * 1024   # SO_RCVLOWAT while nobody reads (Note [tcp receiving])
_ARMED = select.EPOLLIN | select.EPOLLONESHOT
_DISARMED = select.EPOLLONESHOT

_ENDS: "weakref.WeakValueDictionary[tuple[bytes, int], ReceiverEnd]" = (
    weakref.WeakValueDictionary())
_ENDS_LOCK = threading.Lock()
_FINISHED: set[bytes] = set()   # ids of channels whose end here saw a close (or broke)


def prepare(channel_id: bytes, index: int, label: str, num_slots: int) -> "ReceiverEnd":
    """Reader ``index`` of the channel in this process, made and listening on first call."""
    with _ENDS_LOCK:
        end = _ENDS.get((channel_id, index))
        if end is None:
            end = _ENDS[(channel_id, index)] = ReceiverEnd(channel_id, index, label, num_slots)
        return end


def find(channel_id: bytes, index: int) -> "ReceiverEnd | None":
    """Reader ``index``'s end in this process, if it was prepared here."""
    return _ENDS.get((channel_id, index))


def finished_here(channel_id: bytes) -> bool:
    """Whether an end of this channel in this process saw it closed or broken."""
    return channel_id in _FINISHED


def _remaining_ms(deadline: float | None) -> int | None:
    """Milliseconds to ``deadline`` for poll(), rounded up (None: no limit)."""
    if deadline is None:
        return None
    return max(0, int((deadline - time.monotonic()) * 1000 + 0.999))


class ReceiverEnd:
    """The state of one reader in its process; every TcpReader handle of it shares this."""

    def __init__(self, channel_id: bytes, index: int, label: str, num_slots: int) -> None:
        self.channel_id = channel_id
        self.index = index
        self.label = label
        self._listener = tcp_wire.listen()
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._cond = threading.Condition()
        self._waiting = 0                     # threads waiting on _cond (under it)
        self._ring: deque[memoryview] = deque()
        self._state = OPEN
        self._error: BaseException | None = None
        self._writer_claimed = False
        self._inbox: Inbox | None = None
        self._rx_lock = threading.Lock()      # one thread receives at a time
        self._send_lock = threading.Lock()    # acks against the socket's close, and _owed
        self._defer_acks = num_slots > 1      # Note [deferred acks] in spin.py
        self._owed = 0                        # acks owed to the writer (under _send_lock)
        self._fd_lock = threading.Lock()      # epoll and eventfd uses against their close
        self._data_open = False
        self._own_poll: select.poll | None = None   # a reading thread's (under _rx_lock)
        self._epoll = select.epoll()
        self._epoll_open = True
        self._state_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)   # Note [tcp receiving]
        self._wake_r, self._wake_w = socket.socketpair()
        self._askers: dict[int, socket.socket] = {}   # fd -> the writer's ASKER connection
        self._close_asked = False
        self._missed = False   # the background thread found the receive lock held
        self._hot = False      # the last wait ended within spin.HOT_SPIN_S
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"ember-tcp-reader-{channel_id.hex()[:8]}-{index}")
        self._thread.start()

    # -- the reading side (any thread of the reader) ---------------------------------------------

    def take(self, timeout: float | None) -> memoryview:
        """The next frame received, waiting per Note [channel timeouts]; acks it now or owes
        the ack (Note [deferred acks] in spin.py)."""
        try:
            frame = self._ring.popleft()
        except IndexError:
            frame = self._wait(timeout)
        with self._send_lock:
            if self._defer_acks and not self._owed:
                self._owed = 1
                spin.owe(self, self._pay)
                return frame
            self._send_acks(self._owed + 1)
            spin.forgive(self)
        return frame

    def _pay(self) -> None:
        """Send the ack this end owes (Note [deferred acks] in spin.py)."""
        with self._send_lock:
            self._send_acks(self._owed)

    def _send_acks(self, count: int) -> None:
        """Give the writer ``count`` credits back (under _send_lock)."""
        self._owed = 0
        if count and self._data_open:
            try:
                self._inbox.sock.send(tcp_wire.ACK * count)
            except OSError:
                pass   # whoever receives next sees the connection end and reports it

    def _wait(self, timeout: float | None) -> memoryview:
        """Receive or wait until a frame is in the ring (Note [tcp receiving]), then take it."""
        if timeout != 0:   # every wait below is this call's: pay once, before the recv
            spin.pay_debts()
        deadline = None if timeout is None else time.monotonic() + timeout
        ring = self._ring
        while True:
            if (self._state == OPEN and self._inbox is not None
                    and self._rx_lock.acquire(blocking=False)):
                waited = False
                try:
                    self._pump()   # what came while nobody read: no system call but the recv
                    if not ring and timeout != 0 and not self._spin(deadline):
                        waited = True
                        self._receive_here(deadline)
                finally:
                    self._let_go(waited)
            elif timeout != 0:
                self._wait_on_ring(deadline)
            if ring:
                return ring.popleft()
            if self._state != OPEN or (deadline is not None and time.monotonic() >= deadline):
                return self._last_chance(timeout)

    def _spin(self, deadline: float | None) -> bool:
        """Poll the socket for a moment before sleeping (Note [tcp receiving]); True if a
        frame or a state change came (under the receive lock)."""
        start = time.monotonic()
        end = start + (spin.HOT_SPIN_S if self._hot else spin.SPIN_S)
        ring = self._ring

        def ready() -> bool:
            self._pump()
            return bool(ring) or self._state != OPEN
        came = spin.spin(ready, end if deadline is None else min(end, deadline))
        self._hot = came
        return came

    def _receive_here(self, deadline: float | None) -> None:
        """Wait in poll() on the socket and take in what comes, until a frame or a state
        change is there or ``deadline`` passes (under the receive lock)."""
        start = time.monotonic()
        self._arm(False)
        self._inbox.low_water(1)
        try:
            poller = self._own_poll
            if poller is None:
                poller = self._own_poll = select.poll()
                poller.register(self._inbox.sock.fileno(), select.POLLIN)
                poller.register(self._state_fd, select.POLLIN)
            while self._state == OPEN:
                if not poller.poll(_remaining_ms(deadline)) or self._state != OPEN:
                    return
                self._pump()
                if self._ring:
                    return
        finally:
            self._hot = time.monotonic() - start < spin.HOT_SPIN_S

    def _let_go(self, arm: bool) -> None:
        """Release the receive lock, arm the background thread if it may be disarmed (Note
        [tcp receiving]), and wake the threads that wait for the lock."""
        if self._state == OPEN:
            self._inbox.low_water(_AWAY_LOW_WATER)   # the holder's to change
        self._rx_lock.release()
        if self._missed:
            self._missed = False
            arm = True
        if arm and self._state == OPEN:
            self._arm(True)
        if self._waiting:
            with self._cond:
                self._cond.notify_all()

    def _wait_on_ring(self, deadline: float | None) -> None:
        """Wait until a frame or a state change comes, or the receive lock is free to take."""
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(self._worth_a_look, None if deadline is None
                                    else deadline - time.monotonic())
            finally:
                self._waiting -= 1

    def _worth_a_look(self) -> bool:
        return bool(self._ring) or self._state != OPEN or (
            self._inbox is not None and not self._rx_lock.locked())

    def _last_chance(self, timeout: float | None) -> memoryview:
        """The frame that a close still takes in, or the error of an empty end."""
        with self._cond:
            if not self._ring:
                if self._state == CLOSING:   # what the close still takes in comes first
                    self._waiting += 1
                    try:
                        self._cond.wait_for(self._ready, _CLOSING_WAIT_S if timeout == 0
                                            else timeout)
                    finally:
                        self._waiting -= 1
                if not self._ring:
                    raise self._empty_error(timeout)
            return self._ring.popleft()

    def _ready(self) -> bool:
        return bool(self._ring) or self._state >= CLOSED_STATE

    def _empty_error(self, timeout: float | None) -> Exception:
        if self._state == BROKEN:
            return tcp_wire.peer_gone(f"the writer of {self.label}", self._error)
        if self._state != OPEN:
            return ChannelClosedError(f"{self.label} was closed; read is not possible any more")
        return ChannelTimeoutError(f"read on {self.label} timed out after {timeout} s: no new "
                                   f"value was written; retry, or pass a longer timeout")

    def request_close(self) -> None:
        """Close this reader (Note [channel close]); never blocks: the thread takes in what
        is still arriving, then tells the writer."""
        with self._cond:
            if self._state != OPEN:
                return
            self._state = CLOSING
            self._cond.notify_all()
        self._signal_state()
        self._command(b"c")

    # -- receiving (whoever holds the receive lock) ----------------------------------------------

    def _pump(self) -> None:
        """Take in the records of one recv, and the rest of the last if it has begun."""
        inbox = self._inbox
        if inbox is None or self._state >= CLOSED_STATE:
            return
        try:
            if not inbox.fill():
                return
            while inbox.buffered():
                kind, length = inbox.record()
                if kind == VALUE:
                    frame = memoryview(numpy.empty(length, numpy.uint8) if length >= _LARGE
                                       else bytearray(length))
                    inbox.read_into(frame)
                    self._ring.append(frame)
                    if self._waiting:   # counted under the lock before a waiter checks the ring
                        with self._cond:
                            self._cond.notify_all()
                elif kind == CLOSE:
                    self._finish(CLOSED_STATE)
                    return
                else:
                    raise ConnectionError(f"an unknown record kind {kind} from the writer")
        except (OSError, ConnectionError) as exc:
            self._finish(BROKEN, exc)

    def _arm(self, armed: bool) -> None:
        """Let the background thread watch the data socket, or stop it (Note [tcp receiving])."""
        with self._fd_lock:
            if self._epoll_open and self._inbox is not None:
                try:
                    self._epoll.modify(self._inbox.sock, _ARMED if armed else _DISARMED)
                except OSError:
                    pass   # the socket is closed: the end is finished

    def _finish(self, state: int, error: BaseException | None = None) -> None:
        with self._cond:
            if self._state >= CLOSED_STATE:
                return
            self._state, self._error = state, error
            self._cond.notify_all()
        _FINISHED.add(self.channel_id)
        self._signal_state()
        self._command(b"d")   # wakes the thread, wherever this runs

    def _signal_state(self) -> None:
        """Wake a read that waits in poll() (Note [tcp receiving])."""
        with self._fd_lock:
            if self._epoll_open:
                os.eventfd_write(self._state_fd, 1)

    # -- the background thread -------------------------------------------------------------------

    def _command(self, command: bytes) -> None:
        """Wake the background thread: ``c`` a close was asked for, ``d`` the end is done."""
        if command == b"c":
            self._close_asked = True
        try:
            self._wake_w.send(command)
        except OSError:
            pass   # the thread is done

    def _run(self) -> None:
        epoll = self._epoll
        listener, wake = self._listener.fileno(), self._wake_r.fileno()
        epoll.register(listener, select.EPOLLIN)
        epoll.register(wake, select.EPOLLIN)
        try:
            while self._state < CLOSED_STATE:
                for fd, _ in epoll.poll():
                    if fd == listener:
                        self._accept()
                    elif fd == wake:
                        self._wake_r.recv(4096)
                        if self._close_asked:
                            self._drain_then_close()
                    elif fd in self._askers:
                        self._asked(fd)
                    else:
                        self._receive_unread()
        except Exception as exc:  # noqa: BLE001 - a broken end must say so, never hang readers
            self._finish(BROKEN, exc)
        finally:
            self._shut_down()

    def _receive_unread(self) -> None:
        """What arrived while nobody read is worth taking in (Note [tcp receiving])."""
        if not self._rx_lock.acquire(blocking=False):
            self._missed = True   # the holder arms again after its release...
            if not self._rx_lock.acquire(blocking=False):
                return            # ...unless it released before that: then this thread does
        try:
            self._pump()
        finally:
            self._let_go(True)

    def _asked(self, fd: int) -> None:
        """The writer waits for credit: pay what this end owes (Note [deferred acks])."""
        try:
            asks = self._askers[fd].recv(4096)
        except OSError:
            asks = b""
        if not asks:   # the writer let go of it
            with self._fd_lock:
                self._epoll.unregister(fd)
                self._askers.pop(fd).close()
            return
        self._pay()

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        threading.Thread(target=self._admit, args=(conn,), daemon=True,
                         name="ember-tcp-admit").start()

    def _admit(self, conn: socket.socket) -> None:
        """Handshake with a new connection and take it in (in its own thread)."""
        hello = tcp_wire.admit(conn)
        if hello is None:
            return
        role, channel_id, index = HELLO.unpack(hello)
        with self._cond:
            ok = (channel_id == self.channel_id and index == self.index and self._state == OPEN
                  and (role != WRITER or not self._writer_claimed))
            if ok and role == WRITER:
                # in place before the peer hears ADMITTED: what it does next comes after it
                self._writer_claimed = True
                inbox = Inbox(conn)
                inbox.low_water(_AWAY_LOW_WATER)
                with self._send_lock:
                    self._inbox = inbox
                    self._data_open = True
                self._epoll.register(conn, _ARMED)
                self._cond.notify_all()   # a read that waits for a writer receives now
            if ok and role == ASKER:
                with self._fd_lock:
                    ok = self._epoll_open
                    if ok:
                        self._askers[conn.fileno()] = conn
                        self._epoll.register(conn, select.EPOLLIN)
        if ok and role == CLOSER:
            self.request_close()
        if ok and role in (WRITER, CLOSER, ASKER):
            try:
                conn.sendall(ADMITTED)
            except OSError:
                pass
            if role != CLOSER:
                return
        conn.close()

    def _drain_then_close(self) -> None:
        """A close from this process or another: take in what still arrives, then close."""
        with self._rx_lock:   # a read that held it was woken by the state change
            self._arm(False)
            if self._inbox is not None:
                self._inbox.low_water(1)
                data = select.poll()
                data.register(self._inbox.sock.fileno(), select.POLLIN)
                while self._state < CLOSED_STATE and (self._inbox.buffered()
                                                       or data.poll(_QUIET_S * 1000)):
                    self._pump()
        self._finish(CLOSED_STATE)

    def _shut_down(self) -> None:
        """Free the sockets once the end is closed or broken (the ring stays readable)."""
        with self._fd_lock:
            self._epoll_open = False
            self._epoll.close()
            for sock in self._askers.values():
                sock.close()
        self._listener.close()
        with self._send_lock:
            self._data_open = False
        spin.forgive(self)
        with self._rx_lock:   # no read polls these any more: it saw the state change
            if self._inbox is not None:
                sock = self._inbox.sock
                if self._state == CLOSED_STATE:
                    try:
                        sock.send(CLOSED)   # wakes a writer that waits for credit
                    except OSError:
                        pass
                    tcp_wire.linger(sock)
                else:
                    sock.close()
            os.close(self._state_fd)   # no one signals it any more (_epoll_open is False)
        self._wake_r.close()
        self._wake_w.close()
