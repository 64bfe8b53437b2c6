"""Where each participant of a compiled graph runs, as each actor reports it at compile time.

Kept apart from the transport planning (transports.py) so that an actor answers
``describe_process`` without importing the compiler: a fresh actor's first compile paid ~30 ms
of imports per actor for it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from ember._system.shm import session_id

DRIVER = "driver"   # the driver participant of every graph (plan, schedules, endpoints)


@dataclass(frozen=True)
class Endpoint:
    """Where a participant runs: its process (host, pid), the GPU UUIDs it sees, and its node
    (the node's session id: Note [channel choice] in channel_setup.py)."""

    process: tuple[str, int]
    gpus: tuple[str, ...] = ()
    driver: bool = False
    node: str = ""


def describe_process(instance: Any = None, driver: bool = False, gpus: bool = True
                     ) -> Endpoint:
    """Where this process runs (host, pid, node, and its visible GPU UUIDs when ``gpus``: NVML
    is started only for graphs that move tensors); run in each actor at compile time, and in
    the driver."""
    if driver or not gpus:
        return Endpoint((socket.gethostname(), os.getpid()), (), driver, session_id())
    from ember.gpu.devices import visible_gpu_uuids
    uuids = tuple(visible_gpu_uuids())
    return Endpoint((socket.gethostname(), os.getpid()), uuids, False, session_id())
