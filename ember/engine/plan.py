"""Decide where each node runs and which channel carries each value: the ``Plan`` of a graph.

Participants are the actors of the graph, the driver (``DRIVER``: writes the input, reads the
outputs) and, when the graph has remote-function nodes, a thread of the driver that runs them
as dynamic tasks (``DRIVER_TASKS``, Note [function nodes]).

Note [function nodes]
~~~~~~~~~~~~~~~~~~~~~
A node bound on a remote function (``f.bind(...)``) runs in the driver process on a thread of
its own that executes the same schedule machinery as an actor's loop: its COMPUTE submits
``f.remote(*args)`` to the dynamic layer and waits for the result. Its inputs and its result
travel over ordinary channels, so actors before and after it never know that part of the graph
is dynamic, and the results are the same as ``dag.execute``.

Note [input attributes]
~~~~~~~~~~~~~~~~~~~~~~~
The driver writes the arguments of ``execute`` once, into one channel read by every participant
that needs any of them; ``inp[i]`` / ``inp.key`` are picked out by each reader. A node with no
upstream node at all also reads that channel, only to learn that an execution started (so it
runs once per execution, in step with the others).

Note [intra-process hand-off]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
An edge whose two ends run in the same participant gets a channel plan that does not cross
processes (``between_processes`` False); at run time it is the executor's own table of this
execution's values: the producer's COMPUTE stores the value, the consumer's COMPUTE takes it.
No lock, no copy.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ember.dag.collective import CollectiveOutputNode
from ember.dag.nodes import (ClassMethodNode, ClassMethodOutputNode, DAGNode, FunctionNode,
                             InputAttributeNode, InputNode)
from ember.engine.endpoints import DRIVER
from ember.engine.validate import Graph

if TYPE_CHECKING:
    from ember.engine.groups import GroupPlan
    from ember.gpu.tensors import TensorEdge

DRIVER_TASKS = "driver-tasks"


@dataclass(frozen=True)
class ChannelPlan:
    """One channel: the value of ``node``, from ``writer`` to ``readers``, in other processes
    (a channel is made for it; its type comes from where they run: channel_setup.py) or in the
    writer's own (Note [intra-process hand-off]: no channel at all)."""

    id: int
    node: int
    writer: str
    readers: tuple[str, ...]
    between_processes: bool

    def reader_index(self, participant: str) -> int:
        return self.readers.index(participant)

    def __repr__(self) -> str:
        return (f"c{self.id}(n{self.node} {self.writer} -> {', '.join(self.readers)}"
                f"{'' if self.between_processes else ', in-process'})")


@dataclass
class Plan:
    """Where every node runs and every channel of a graph."""

    graph: Graph
    hosts: list[str | None]               # participant computing each node; None: input attribute
    deps: list[list[int]]                 # data and trigger dependencies of each node
    computed_by: list[tuple[str, ...]]    # participants that compute each node
    participants: list[str]               # actors (bind order), then DRIVER_TASKS, then DRIVER
    channels: list[ChannelPlan]
    remote: dict[int, int] = field(default_factory=dict)   # node -> its channel to other processes
    actors: dict[str, Any] = field(default_factory=dict)   # actor id -> handle
    # GPU transports (ember.engine.transports): tensor edges by channel id, communicator groups,
    # and per collective output node: (the collective's id, its group's key)
    tensor_edges: dict[int, "TensorEdge"] = field(default_factory=dict)
    groups: list["GroupPlan"] = field(default_factory=list)
    collectives: dict[int, tuple[int, Hashable]] = field(default_factory=dict)

    def channel_of(self, node: int) -> ChannelPlan:
        return self.channels[self.remote[node]]


def host_of(node: DAGNode) -> str | None:
    """The participant that computes ``node`` (None for input attributes, see the Notes)."""
    if isinstance(node, (ClassMethodNode, ClassMethodOutputNode, CollectiveOutputNode)):
        return node.actor_id
    if isinstance(node, FunctionNode):
        return DRIVER_TASKS
    if isinstance(node, InputNode):
        return DRIVER
    if isinstance(node, InputAttributeNode):
        return None
    raise TypeError(f"cannot place {node.describe()}: unknown node type")


def make_plan(graph: Graph) -> Plan:
    """Place the nodes of ``graph`` and give every edge a channel."""
    nodes = graph.nodes
    n = len(nodes)
    hosts = [host_of(node) for node in nodes]
    deps = [list(ups) if ups or i == graph.input else [graph.input]
            for i, ups in enumerate(graph.upstream)]
    consumers: list[list[int]] = [[] for _ in range(n)]
    for i, ups in enumerate(deps):
        for up in ups:
            consumers[up].append(i)
    outputs = set(graph.outputs)
    # Input attributes are computed wherever they are read (Note [input attributes]).
    computed_by: list[tuple[str, ...]] = [()] * n
    for i in reversed(range(n)):
        if hosts[i] is not None:
            computed_by[i] = (hosts[i],)
        else:
            computed_by[i] = _unique(p for c in consumers[i] for p in computed_by[c])
    actors: dict[str, Any] = {}
    for node in nodes:
        if isinstance(node, ClassMethodNode) and node.actor_id not in actors:
            actors[node.actor_id] = node.actor
    participants = list(actors)
    if DRIVER_TASKS in hosts:
        participants.append(DRIVER_TASKS)
    participants.append(DRIVER)
    channels: list[ChannelPlan] = []
    remote: dict[int, int] = {}
    for i in range(n):
        host = hosts[i]
        if host is None:
            continue
        readers = _unique([p for c in consumers[i] for p in computed_by[c]]
                          + ([DRIVER] if i in outputs else []))
        far = tuple(p for p in participants if p in readers and p != host)
        if far:
            remote[i] = len(channels)
            channels.append(ChannelPlan(len(channels), i, host, far, True))
        if host in readers:
            channels.append(ChannelPlan(len(channels), i, host, (host,), False))
    return Plan(graph=graph, hosts=hosts, deps=deps, computed_by=computed_by,
                participants=participants, channels=channels, remote=remote, actors=actors)


def _unique(items) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return tuple(out)
