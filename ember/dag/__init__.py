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
"""

from ember.dag.collective import CollectiveOutputNode
from ember.dag.context import DAGContext
from ember.dag.nodes import (PARENT_CLASS_NODE_KEY, PREV_CLASS_METHOD_CALL_KEY, ClassMethodNode,
                             ClassMethodOutputNode, ClassNode, DAGNode, FunctionNode,
                             InputAttributeNode, InputNode, MultiOutputNode)
from ember.gpu.tensors import TorchTensorType

__all__ = [
    "PARENT_CLASS_NODE_KEY",
    "PREV_CLASS_METHOD_CALL_KEY",
    "ClassMethodNode",
    "ClassMethodOutputNode",
    "ClassNode",
    "CollectiveOutputNode",
    "DAGContext",
    "DAGNode",
    "FunctionNode",
    "InputAttributeNode",
    "InputNode",
    "MultiOutputNode",
    "TorchTensorType",
]
