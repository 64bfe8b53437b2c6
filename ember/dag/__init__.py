"""The graph API: bind actor methods and remote functions into a graph, run it or compile it.

    from ember.dag import InputNode, MultiOutputNode
    with InputNode() as inp:
        dag = b.fwd.bind(a.fwd.bind(inp))
    dag.execute(x)               # uncompiled, through the dynamic layer
    cdag = dag.compile()         # or dag.experimental_compile()
    cdag.execute(x).get()

GPU tensors: ``node.with_tensor_transport("auto" | "ipc" | "nccl" | "cpu")`` or
``node.with_type_hint(TorchTensorType(shape=..., dtype=..., transport=...))``; collectives:
``ember.dag.collective.allreduce.bind([n1, n2])`` (also allgather, reducescatter).

Remote-function nodes (``f.bind(...)``) may sit anywhere in a compiled graph: the actor part
runs over channels, the function nodes run as dynamic tasks submitted by the driver.
"""

from ember.dag.collective import CollectiveOutputNode
from ember.dag.nodes import (ClassMethodNode, ClassMethodOutputNode, DAGNode, FunctionNode,
                             InputAttributeNode, InputNode, MultiOutputNode)
from ember.gpu.tensors import TorchTensorType

__all__ = [
    "ClassMethodNode",
    "ClassMethodOutputNode",
    "CollectiveOutputNode",
    "DAGNode",
    "FunctionNode",
    "InputAttributeNode",
    "InputNode",
    "MultiOutputNode",
    "TorchTensorType",
]
