"""``DAGContext``: the process-wide defaults of ``dag.compile()``, as Ray's ``ray.dag.DAGContext``.

    from ember.dag import DAGContext
    DAGContext.get_current().submit_timeout = 5    # every later compile waits 5 s for room

An option passed to ``compile`` wins over the context; the context is read once per compile.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ember.channels.shared_memory import DEFAULT_SLOT_CAPACITY

_current: "DAGContext | None" = None
_lock = threading.Lock()


@dataclass
class DAGContext:
    """Defaults of every compile option Ray keeps in its DAGContext; timeouts in seconds, None
    waits without limit. ``max_buffered_results`` None keeps every result until it is fetched;
    a number makes a graph raise ``RayCgraphCapacityExceeded`` past it, as Ray does."""

    submit_timeout: float | None = 30.0
    get_timeout: float | None = None
    teardown_timeout: float = 5.0
    buffer_size_bytes: int = DEFAULT_SLOT_CAPACITY
    max_inflight_executions: int = 8
    max_buffered_results: int | None = None
    overlap_gpu_communication: bool = False

    @staticmethod
    def get_current() -> "DAGContext":
        """The context of this process (created with the defaults on first use)."""
        global _current
        with _lock:
            if _current is None:
                _current = DAGContext()
            return _current
