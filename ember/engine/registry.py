"""The live compiled graphs of this process, torn down at ``ember.shutdown`` and at exit, and
listed in the GCS's ``compiled_graphs`` table for ``ember status`` while they live."""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import weakref
from typing import Any

logger = logging.getLogger(__name__)

_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()


def teardown_all() -> None:
    """Tear down every live compiled graph (at ``ember.shutdown`` and at interpreter exit), then
    drop this process's communicator groups and stores (Note [group rendezvous] in groups.py)."""
    for dag in list(_LIVE):
        try:
            dag.teardown()
        except Exception:  # noqa: BLE001
            logger.exception("teardown of %r failed", dag)
    communicator = sys.modules.get("ember.gpu.communicator")
    if communicator is not None:   # loaded only where a graph used GPU communication
        communicator.communicator_registry.clear()
        communicator.close_stores()


_hooks_lock = threading.Lock()
_atexit_registered = False


def register(dag: Any) -> None:
    """Track ``dag`` so that ``ember.shutdown`` and interpreter exit tear it down."""
    global _atexit_registered
    from ember.dynamic.api.driver import add_shutdown_hook, remove_shutdown_hook
    _LIVE.add(dag)
    with _hooks_lock:
        if not _atexit_registered:
            atexit.register(teardown_all)
            _atexit_registered = True
        remove_shutdown_hook(teardown_all)   # once per runtime, whatever shutdown did to the list
        add_shutdown_hook(teardown_all)
    _publish("kv_put", dag.get_id(), {"driver": _core().address, "actors": dag.num_actors()},
             True)


def unregister(dag: Any) -> None:
    """Stop tracking ``dag`` (it was torn down)."""
    _LIVE.discard(dag)
    _publish("kv_del", dag.get_id())


def _core() -> Any:
    from ember.dynamic.api.driver import runtime
    return runtime()[0]


def _publish(kind: str, *fields: Any) -> None:
    """Tell the GCS of a graph that starts or ends (best effort: never fails a compile)."""
    from ember.dynamic.api.driver import is_initialized
    if is_initialized():
        core = _core()
        core.endpoint.request(core.gcs_address, kind, "compiled_graphs", *fields)
