"""Compile and run static graphs: validate, plan channels, per-actor schedules, executor loops.

``ember.dag`` is the user-facing API; ``DAGNode.compile`` lands here (``compile_dag``).

The names below are loaded on first use (Note [lazy exports] in ember/lazy_exports.py), so that
an actor process that only runs an executor loop (``ember.engine.executor``) does not import the
driver's side (asyncio, thread pools): that import is on the critical path of ``compile``.
"""

from __future__ import annotations

from ember.lazy_exports import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
