"""Compile and run static graphs: validate, plan channels, per-actor schedules, executor loops.

``ember.dag`` is the user-facing API; ``DAGNode.compile`` lands here (``compile_dag``).
"""

from ember.engine.compiled_dag import CompiledDAG, compile_dag
from ember.engine.options import CompileOptions
from ember.engine.refs import CompiledDAGFuture, CompiledDAGRef, CompiledDAGRefList
from ember.engine.registry import teardown_all

__all__ = [
    "CompileOptions",
    "CompiledDAG",
    "CompiledDAGFuture",
    "CompiledDAGRef",
    "CompiledDAGRefList",
    "compile_dag",
    "teardown_all",
]
