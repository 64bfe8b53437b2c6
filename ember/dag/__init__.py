"""The graph API: bind actor methods and remote functions into a graph, run it or compile it.

    from ember.dag import InputNode, MultiOutputNode
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    dag.execute(x)               # uncompiled, through the dynamic layer
    cdag = dag.compile()         # or dag.experimental_compile()
    cdag.execute(x).get()        # or ember.get(ref), or `await cdag.execute(x)`
    fut = await cdag.execute_async(x); value = await fut    # Ray's asyncio form

``Actor.bind(*args)`` gives a ``ClassNode`` whose methods bind like a handle's; the uncompiled
graph creates the actor. ``DAGContext.get_current()`` holds the defaults of ``compile``.

GPU tensors: ``node.with_tensor_transport("auto" | "ipc" | "nccl" | "cpu")`` or
``node.with_type_hint(TorchTensorType(shape=..., dtype=..., transport=...))``; collectives:
``ember.dag.collective.allreduce.bind([n1, n2])`` (also allgather, reducescatter).

Remote-function nodes (``f.bind(...)``) may sit anywhere in a compiled graph: the actor part
runs over channels, the function nodes run as dynamic tasks submitted by the driver.

Its names load their module on first use (Note [lazy exports] in ember/lazy_exports.py).
"""

from __future__ import annotations

from ember.lazy_exports import lazy_exports

_EXPORTS = {name: module for module, names in {
    "ember.dag.collective": ["CollectiveOutputNode"],
    "ember.dag.class_node": ["ClassNode"],
    "ember.dag.context": ["DAGContext"],
    "ember.dag.nodes": ["PARENT_CLASS_NODE_KEY", "PREV_CLASS_METHOD_CALL_KEY", "ClassMethodNode",
                        "ClassMethodOutputNode", "DAGNode", "FunctionNode",
                        "InputAttributeNode", "InputNode", "MultiOutputNode"],
    "ember.gpu.tensors": ["TorchTensorType"],
}.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
