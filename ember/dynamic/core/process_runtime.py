"""This process's runtime: its CoreWorker and Submitter, found by every room that needs them.

Note [process runtime]: one ember process (a driver or a worker) runs one CoreWorker and one
Submitter. They are installed here when the process starts them (``ember.init`` in a driver, a
worker at start-up), so that an ``ObjectRef`` being unpickled, the runtime context and the API
find them without importing the modules that build them. A driver that has not called
``ember.init()`` starts a local cluster on first use, as Ray does: ``api/driver.py`` registers
its ``init`` here as the starter (a callback passed down, not an import up).
"""

from __future__ import annotations

from typing import Any, Callable

from ember.exceptions import RuntimeNotInitializedError

_runtime: tuple[Any, Any] | None = None   # (CoreWorker, Submitter)
_starter: Callable[[], Any] | None = None


def set_runtime(core: Any, submitter: Any) -> None:
    """Install this process's CoreWorker and Submitter."""
    global _runtime
    _runtime = (core, submitter)


def clear_runtime() -> None:
    """Forget the runtime (``ember.shutdown``)."""
    global _runtime
    _runtime = None


def set_starter(start: Callable[[], Any]) -> None:
    """What ``runtime()`` calls to start a local cluster in a driver that never called init."""
    global _starter
    _starter = start


def runtime() -> tuple[Any, Any]:
    """This process's (CoreWorker, Submitter), starting a local cluster on first use."""
    if _runtime is None and _starter is not None:
        _starter()
    if _runtime is None:
        raise RuntimeNotInitializedError("ember is not running; call ember.init() first")
    return _runtime


def is_initialized() -> bool:
    """Whether ember is running in this process."""
    return _runtime is not None


def current_core() -> Any:
    """The running process's CoreWorker, without starting one."""
    if _runtime is None:
        raise RuntimeNotInitializedError("ember is not running; call ember.init() first")
    return _runtime[0]
