"""Create the channels of a compiled graph: a type per edge from where its ends run, the readers'
rendezvous.

Note [channel choice]
~~~~~~~~~~~~~~~~~~~~~
An edge between two processes gets ``ByNodeType(writer's node, readers' nodes, same_node,
TcpType())``: shared memory to the readers on the writer's node, TCP to the others (Note [mixed
edges] in channels/composite.py). A node is a process's ``shm.session_id()`` (every process of
a node shares it; ``describe_process`` reports it), not its host name, which several nodes on
one machine share. The private compile option ``_channel_type`` replaces the same-node type
(``dag.compile(_channel_type=TcpType())`` runs every edge over TCP on one machine, for tests
and benchmarks). An edge that carries tensors gets ``TensorType`` around that type (its GPU
transports per reader come from the plan: ember/engine/transports.py). The compiler only calls
the type objects: it never looks at which transport a channel is.
"""

from __future__ import annotations

from typing import Any, Callable

from ember.channels.composite import ByNodeType
from ember.channels.interface import Channel, ChannelType
from ember.channels.shared_memory import SharedMemoryType
from ember.channels.tcp import TcpType
from ember.engine.options import CompileOptions
from ember.engine.plan import ChannelPlan, Plan
from ember.engine.endpoints import Endpoint


def channel_type(plan: Plan, cp: ChannelPlan, endpoints: dict[str, Endpoint],
                 options: CompileOptions) -> ChannelType:
    """The type of an edge between processes, from the nodes of its ends, wrapped in a
    TensorType when the edge carries tensors (Note [channel choice])."""
    same_node = options.channel_type or SharedMemoryType(slot_capacity=options.buffer_size_bytes)
    kind: ChannelType = ByNodeType(endpoints[cp.writer].node,
                                   [endpoints[r].node for r in cp.readers], same_node, TcpType())
    edge = plan.tensor_edges.get(cp.id)
    if edge is not None:
        from ember.gpu.tensor_channel import TensorType
        kind = TensorType(kind, edge)
    return kind


def create_channels(plan: Plan, endpoints: dict[str, Endpoint], options: CompileOptions,
                    channels: dict[int, Any],
                    call: Callable[[str, Callable, tuple], Callable[[], Any]]) -> None:
    """Fill ``channels`` (channel id -> channel) for every edge between processes, rendezvous
    included; ``call(participant, fn, args)`` runs ``fn(instance, *args)`` where the participant
    runs and returns a function that waits for its result. What was made before a failure is in
    ``channels``, for the caller's teardown."""
    for cp in plan.channels:
        if cp.between_processes:   # else the executor hands the value over (plan.py)
            kind = channel_type(plan, cp, endpoints, options)
            channels[cp.id] = kind.create_channel(len(cp.readers),
                                                  num_slots=options.max_inflight_executions)
    rendezvous(plan, channels, call)


def rendezvous(plan: Plan, channels: dict[int, Channel],
               call: Callable[[str, Callable, tuple], Callable[[], Any]]) -> None:
    """Prepare every reader that listens in its own process, all participants at once, and
    give the addresses to the channels here (Note [tcp channel rendezvous] in channels/tcp.py)."""
    wanted: dict[str, list[tuple[int, int]]] = {}
    for cp in plan.channels:
        channel = channels.get(cp.id)
        for index in (channel.rendezvous_readers() if channel is not None else ()):
            wanted.setdefault(cp.readers[index], []).append((cp.id, index))
    pending = [(items, call(participant, prepare_readers,
                            ([(channels[cid], index) for cid, index in items],)))
               for participant, items in wanted.items()]
    for items, wait in pending:
        for (cid, index), address in zip(items, wait()):
            channels[cid].set_reader_address(index, address)


def prepare_readers(instance: Any, readers: list[tuple[Channel, int]]) -> list[Any]:
    """Prepare each (channel, reader index) in this process; return their addresses (run in
    each reader's process at compile time)."""
    return [channel.prepare_reader(index) for channel, index in readers]
