"""Rebuilding objects lost with a node by running their task again.

Note [lineage]: when a task that may be retried (``max_retries`` left) finishes with a result
in the shared memory of another node, its owner keeps the call (function, arguments, resources)
instead of forgetting it, and keeps its arguments pinned, for as long as one of its results
lives. If that node dies (Note [node death] in node_manager/server.py), each such result goes back to
pending and the call is submitted again, taking one retry: its ``get`` then returns the rebuilt
value; waiters do not notice. A result of a task without retries left, and any value made by
``put``, is lost for good (``ObjectLostError``), as in Ray. When the last of a call's results is
freed, the call and its arguments are let go.
"""

from __future__ import annotations

from typing import Any, Callable

from ember.dynamic.core.core_worker import IN_SHM
from ember.dynamic.core.task_spec import PendingCall, release_args


class Lineage:
    """The finished calls of one owner that could rebuild their results."""

    def __init__(self, core: Any, resubmit: Callable[[PendingCall], None]) -> None:
        """``resubmit`` queues a call again on its owner's pool (``Submitter.requeue``)."""
        self.core = core
        self.resubmit = resubmit
        self.calls: dict[str, PendingCall] = {}   # result oid -> the call that made it
        self.core.rebuild = self.rebuild

    def keep(self, call: PendingCall, results: list) -> bool:
        """Keep ``call`` if it could rebuild a result held on another node; True if kept (its
        arguments then stay pinned)."""
        here = self.core.node.node_id
        if call.kind != "task" or call.retries_left == 0 or not any(
                state == IN_SHM and payload[1].node_id != here for state, payload in results):
            return False
        for oid in call.return_ids:
            self.calls[oid] = call
            self.core.when_freed(oid, lambda oid=oid: self._freed(oid))
        return True

    def _freed(self, oid: str) -> None:
        call = self.calls.pop(oid, None)
        if call is not None and not any(self.calls.get(o) is call for o in call.return_ids):
            release_args(self.core, call)

    def rebuild(self, oid: str) -> bool:
        """Run again the call that made lost object ``oid``; False if there is none (under the
        core's lock: the entries of its results are PENDING again when this returns True)."""
        call = self.calls.get(oid)
        if call is None or call.retries_left == 0:
            return False
        call.retries_left -= 1
        for result in call.return_ids:
            self.core.unresolve(result)
        self.resubmit(call)
        return True
