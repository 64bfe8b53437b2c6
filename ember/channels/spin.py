"""What a blocked channel call does before it sleeps: it pays what this process owes its
peers (Note [deferred acks]), then polls for a moment (Note [channel waiting] in
shared_memory.py; the TCP reader's use is Note [tcp receiving] in tcp_receiver.py).

Note [deferred acks]
~~~~~~~~~~~~~~~~~~~~
A TCP reader gives its writer a credit back for every value it takes (Note [tcp credits] in
tcp.py). Sent at once, that ack is a system call between taking a value and using it: on the
critical path of every hop (a quarter of a compiled round trip over TCP). So a channel with two
slots or more *owes* the ack of the value just taken instead, and pays it at the first of:

- the next read of the same end (which sends both acks in one call);
- any channel call of this process, in any thread, that is about to block: a read that finds
  nothing, a write without room, on any channel. It calls ``pay_debts()`` first.

- a writer's ask: a write that has waited 2 ms for credit sends an ASK byte over a connection
  of its own to each reader it waits for (tcp.py), and that reader's background thread pays.

So a writer is short of at most one credit per reader, and only while that reader's process
is not waiting on any channel (it computes, or waits on something else) and for 2 ms at most
after the writer needs it: a read makes room, a moment later, whatever the reader does next.
A channel with one slot acks at once (its only credit is never owed).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Hashable

SPIN_S = 50e-6       # how long a wait polls first
HOT_SPIN_S = 1e-3    # ... if its last wait ended within this (values come at a steady rate)

_DEBTS: dict[Hashable, Callable[[], None]] = {}   # who owes -> how it pays (Note [deferred acks])


def owe(debtor: Hashable, pay: Callable[[], None]) -> None:
    """Record that ``debtor`` owes a peer something that ``pay()`` settles before any wait."""
    _DEBTS[debtor] = pay


def forgive(debtor: Hashable) -> None:
    """Forget ``debtor``'s debt (it paid another way, or its peer is gone)."""
    _DEBTS.pop(debtor, None)


def pay_debts() -> None:
    """Settle everything this process owes (Note [deferred acks]); call before blocking."""
    while _DEBTS:
        try:
            _, pay = _DEBTS.popitem()
        except KeyError:   # another thread paid the last one meanwhile
            return
        pay()


def spin(ready: Callable[[], bool], end: float) -> bool:
    """Pay this process's debts, then call ``ready()``, yielding the core between calls, until
    it returns True (then True) or ``end`` (time.monotonic) passes (then False)."""
    if _DEBTS:
        pay_debts()
    yield_core, now = os.sched_yield, time.monotonic
    while True:
        if ready():
            return True
        if now() > end:
            return False
        yield_core()
