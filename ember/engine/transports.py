"""Choose how tensors travel on each edge of a compiled graph, and the communicator groups that carry them.

Note [auto transport]
~~~~~~~~~~~~~~~~~~~~~
Per writer and reader of an edge whose node has a tensor type hint:

* same process                          -> hand-off (the plan's intra-process channel);
* the reader is the driver              -> "cpu" (Note [tensors to the driver]);
* different nodes                       -> "nccl" when both ends see a GPU or "nccl" is asked
                                           (a gloo group on CPUs, bound to the node IPs), else
                                           "cpu": serialized in the TCP channel's message; an
                                           explicit "ipc" is a CompileError;
* "auto", either end sees no GPU        -> "cpu": tensors travel in the shared-memory message;
* "auto", both on one physical GPU      -> "ipc" (device UUIDs compared: CUDA_VISIBLE_DEVICES may
                                           give the same GPU another index in each process);
* "auto", different GPUs                -> "nccl".

An explicit "ipc" needs both ends on one GPU, an explicit "nccl" (or a Communicator) needs two
different GPUs, or no GPU at all: then the group is gloo and carries CPU tensors, the path CI runs.

Note [tensors to the driver]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The driver joins no group and may have no GPU, so a hinted node read by the driver sends it host
copies of its CUDA tensors: ``ref.get()`` returns CPU tensors. (A node without a hint pickles its
value as torch does, which keeps the device: the driver then needs that GPU.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ember.dag.collective import CollectiveOutputNode
from ember.engine.groups import GLOO_BACKEND, NCCL_BACKEND, USER_BACKEND, GroupPlan, group_key
from ember.engine.endpoints import Endpoint
from ember.engine.plan import Plan
from ember.exceptions import CompileError
from ember.gpu.tensors import AUTO, CPU, HANDOFF, IPC, NCCL

if TYPE_CHECKING:
    from ember.gpu.tensors import TensorEdge

def choose_transport(requested: str, writer: Endpoint, reader: Endpoint, where: str = "") -> str:
    """The transport from ``writer`` to ``reader`` for a hint asking ``requested`` (Note [auto transport])."""
    if writer.process == reader.process:
        return HANDOFF
    if reader.driver:
        return CPU
    if writer.driver and requested in (IPC, NCCL):
        raise CompileError(f"{where} is written by the driver, which joins no GPU group; use "
                           f"transport 'auto' or 'cpu' for it")
    if requested == CPU or writer.driver:
        return CPU
    if writer.node != reader.node:   # Note [auto transport]: no GPU is shared across nodes
        if requested == IPC:
            raise CompileError(f"{where} asks for transport 'ipc' between nodes {writer.node} "
                               f"and {reader.node}; CUDA IPC needs both actors on one GPU: use "
                               f"'auto' or 'nccl'")
        return NCCL if requested == NCCL or (writer.gpus and reader.gpus) else CPU
    same_gpu = bool(writer.gpus and reader.gpus) and writer.gpus[0] == reader.gpus[0]
    if requested == AUTO:
        if not writer.gpus or not reader.gpus:
            return CPU
        return IPC if same_gpu else NCCL
    if requested == IPC and not same_gpu:
        raise CompileError(f"{where} asks for transport 'ipc', which needs both actors on one GPU "
                           f"(GPUs {writer.gpus} and {reader.gpus}); use 'auto' or 'nccl'")
    if requested == NCCL and same_gpu:
        raise CompileError(f"{where} asks for transport 'nccl' between two actors on GPU "
                           f"{writer.gpus[0]}; NCCL cannot put two ranks on one GPU: use 'ipc' or "
                           f"'auto'")
    return requested


def needs_transports(plan: Plan) -> bool:
    """Whether the graph has a tensor type hint or a collective (then compile asks the actors
    for their GPUs)."""
    return any(node.type_hint is not None or isinstance(node, CollectiveOutputNode)
               for node in plan.graph.nodes)


class _Groups:
    """The groups of one graph, built as edges and collectives ask for them (one per key)."""

    def __init__(self, graph_id: str, endpoints: dict[str, Endpoint]) -> None:
        self.graph_id = graph_id
        self.endpoints = endpoints
        self.groups: dict[Any, GroupPlan] = {}
        self._user: dict[int, GroupPlan] = {}

    def get(self, actors: tuple[str, ...], communicator: Any, where: str) -> GroupPlan:
        """The group over ``actors`` (in rank order): built-in, or the user's ``communicator``."""
        if communicator is not None:
            group = self._user.get(id(communicator))
            if group is None:
                key = (USER_BACKEND, self.graph_id, len(self._user))
                group = GroupPlan(key, "", actors, USER_BACKEND, communicator)
                self._user[id(communicator)] = self.groups[key] = group
            elif group.actors != actors:
                raise CompileError(f"{where} uses a Communicator that another edge of the graph "
                                   f"uses over actors {group.actors}, not {actors}")
            return group
        gpus = [self.endpoints[a].gpus[:1] for a in actors]
        backend = NCCL_BACKEND if all(gpus) else GLOO_BACKEND
        if backend == NCCL_BACKEND and len(set(gpus)) < len(gpus):
            raise CompileError(f"{where} needs an NCCL group over actors {actors}, but some share "
                               f"a GPU and NCCL cannot put two ranks on one GPU; give each actor "
                               f"its own GPU (num_gpus=1)")
        key = group_key(backend, actors)
        if key not in self.groups:
            self.groups[key] = GroupPlan(key, f"ember-{self.graph_id}-g{len(self.groups)}",
                                         actors, backend)
        return self.groups[key]


def plan_transports(plan: Plan, endpoints: dict[str, Endpoint], graph_id: str,
                    overlap: bool = False) -> None:
    """Fill ``plan.tensor_edges``, ``plan.groups`` and ``plan.collectives`` from the hints."""
    graph = plan.graph
    groups = _Groups(graph_id, endpoints)
    edges: dict[int, TensorEdge] = {}
    for cp in plan.channels:
        hint = graph.nodes[cp.node].type_hint
        if not cp.between_processes or hint is None:
            continue
        where = graph.nodes[cp.node].describe()
        requested = hint.transport if isinstance(hint.transport, str) else NCCL
        transports = tuple(choose_transport(requested, endpoints[cp.writer], endpoints[r], where)
                           for r in cp.readers)
        transports = tuple(CPU if t == HANDOFF else t for t in transports)
        if cp.writer not in plan.actors:
            continue   # the driver writes: its tensors travel in the message as they are
        edges[cp.id] = _edge(cp, transports, hint, groups, overlap, where)
    plan.tensor_edges = edges
    for pos, node in enumerate(graph.nodes):
        if isinstance(node, CollectiveOutputNode):
            call = node.call
            group = groups.get(call.actor_ids, call.transport, node.describe())
            plan.collectives[pos] = (graph.position(call.outputs[0]), group.key)
    plan.groups = sorted(groups.groups.values(), key=lambda g: repr(g.key))


def _edge(cp: Any, transports: tuple[str, ...], hint: Any, groups: _Groups, overlap: bool,
          where: str) -> "TensorEdge":
    """The TensorEdge of one channel, with its group when a reader takes "nccl"."""
    from ember.gpu.tensors import TensorEdge
    nccl_readers = [r for r, t in zip(cp.readers, transports) if t == NCCL]
    if not nccl_readers:
        return TensorEdge(transports, "cuda", hint, overlap=overlap, where=where)
    communicator = None if isinstance(hint.transport, str) else hint.transport
    group = groups.get(tuple(sorted([cp.writer, *nccl_readers])), communicator, where)
    device = "cuda" if all(groups.endpoints[a].gpus for a in group.actors) else "cpu"
    ranks = tuple(group.rank(r) if t == NCCL else -1 for r, t in zip(cp.readers, transports))
    return TensorEdge(transports, device, hint, group.key, group.rank(cp.writer), ranks,
                      overlap, where)
