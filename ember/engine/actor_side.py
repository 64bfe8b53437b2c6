"""What the driver runs inside an actor's process (through ``_ember_run``): start, check and
stop that actor's executor loop of a graph, with typed replies."""

from __future__ import annotations

import inspect
import os
import socket
import threading
from typing import Any, NamedTuple

from ember.engine.executor import ExecutorLoop
from ember.engine.groups import join_groups, release_groups
from ember.engine.schedule import Schedule
from ember.exceptions import EmberError


class LoopStarted(NamedTuple):
    """The loop runs: the actor's host and pid, which the driver watches (Note [dead actors])."""

    host: str
    pid: int


class LoopRefused(NamedTuple):
    """The loop was not started; ``reason`` becomes the driver's CompileError."""

    reason: str


_LOOPS: dict[tuple[str, str], ExecutorLoop] = {}   # (graph id, actor id) -> loop
_LOOPS_LOCK = threading.Lock()


def start_actor_loop(instance: Any, graph_id: str, schedule: Schedule, channels: dict[int, Any],
                     num_nodes: int, actor_id: str, groups: tuple = (),
                     store: tuple[str, int] | None = None,
                     overlap: bool = False) -> "LoopStarted | LoopRefused":
    """Start this actor's loop of graph ``graph_id`` (run through ``_ember_run``), after joining
    its communicator ``groups`` on the driver's ``store`` (Note [group rendezvous] in groups.py).

    Returns ``LoopStarted`` with the actor's host and pid, which the driver watches, or
    ``LoopRefused`` when a method does not exist or does not take the bound arguments, or a
    group cannot be joined (the driver raises its reason as CompileError).
    """
    where = f"actor {actor_id} (pid {os.getpid()})"
    try:  # joined even when a method is wrong, so that no other member waits for this one
        group_keys = join_groups(actor_id, groups, store)
    except Exception as exc:  # noqa: BLE001 - reported to the driver as a CompileError
        return LoopRefused(f"{where} could not join its communicator groups {list(groups)}: "
                           f"{type(exc).__name__}: {exc}")
    problem = check_methods(instance, schedule)
    if problem is not None:
        release_groups(group_keys)
        return LoopRefused(problem)
    try:
        loop = ExecutorLoop(graph_id, schedule, channels, instance, where, num_nodes, overlap)
    except BaseException:
        release_groups(group_keys)
        raise
    key = (graph_id, actor_id)
    with _LOOPS_LOCK:
        if key in _LOOPS:
            release_groups(group_keys)
            raise EmberError(f"graph {graph_id} already has a loop in {where}")
        _LOOPS[key] = loop

    def forget() -> None:  # a loop that ends on its own (graph dropped or broken) leaves no trace
        release_groups(group_keys)
        with _LOOPS_LOCK:
            if _LOOPS.get(key) is loop:
                del _LOOPS[key]
    loop.on_exit = forget
    loop.start()
    return LoopStarted(socket.gethostname(), os.getpid())


def check_methods(instance: Any, schedule: Schedule) -> str | None:
    """Describe the first method node whose method is missing or whose bound arguments do not
    match its signature; None if every one fits."""
    for spec in schedule.nodes.values():
        if spec.kind != "method":
            continue
        fn = getattr(instance, spec.name, None)
        if fn is None:
            return f"{spec.label}: the actor has no method {spec.name!r}"
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue
        try:
            sig.bind(*spec.args, **spec.kwargs)
        except TypeError as exc:
            return (f"{spec.label} is bound with {len(spec.args)} positional arguments "
                    f"and keywords {sorted(spec.kwargs)}, which do not match the signature "
                    f"{spec.name}{sig}: {exc}")
    return None


def stop_actor_loop(instance: Any, graph_id: str, actor_id: str, timeout: float) -> bool:
    """End this actor's loop of graph ``graph_id``; True if it ended within ``timeout``."""
    with _LOOPS_LOCK:
        loop = _LOOPS.pop((graph_id, actor_id), None)
    if loop is None:
        return True
    return loop.stop(timeout)


def running_loops(instance: Any = None) -> list[str]:
    """The ids of the graphs with a loop in this process (for tests and debugging)."""
    with _LOOPS_LOCK:
        return [gid for (gid, _), loop in _LOOPS.items()
                if loop._thread is not None and loop._thread.is_alive()]
