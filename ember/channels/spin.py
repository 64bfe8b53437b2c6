"""The bounded poll a blocked channel call does before it sleeps (Note [channel waiting] in
shared_memory.py; the TCP reader's use is Note [tcp receiving] in tcp_receiver.py)."""

from __future__ import annotations

import os
import time
from typing import Callable

SPIN_S = 50e-6       # how long a wait polls first
HOT_SPIN_S = 1e-3    # ... if its last wait ended within this (values come at a steady rate)


def spin(ready: Callable[[], bool], end: float) -> bool:
    """Call ``ready()``, yielding the core between calls, until it returns True (then True) or
    ``end`` (time.monotonic) passes (then False)."""
    yield_core, now = os.sched_yield, time.monotonic
    while True:
        if ready():
            return True
        if now() > end:
            return False
        yield_core()
