"""Compile and run static graphs: validate, plan channels, per-actor schedules, executor loops.

``ember.dag`` is the user-facing API; ``DAGNode.compile`` lands here (``compile_dag``).

The names below are loaded on first use, so that an actor process that only runs an executor
loop (``ember.engine.executor``) does not import the driver's side (asyncio, thread pools):
that import is on the critical path of ``compile``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CompileOptions": "ember.engine.options",
    "CompiledDAG": "ember.engine.compiled_dag",
    "CompiledDAGFuture": "ember.engine.refs",
    "CompiledDAGRef": "ember.engine.refs",
    "CompiledDAGRefList": "ember.engine.refs",
    "compile_dag": "ember.engine.compiled_dag",
    "teardown_all": "ember.engine.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ember.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
