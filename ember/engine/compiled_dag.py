"""``CompiledDAG``: compile a bound graph, run executions over channels, hand out results.

``compile_dag`` validates the graph, plans its channels and schedules, creates the channels,
starts one executor loop per actor (and one in the driver for remote-function nodes), and
returns a ``CompiledDAG``. ``execute`` writes the arguments into the input channel and returns
a ``CompiledDAGRef``; ``get`` reads the output channels in execution order, keeping results
that belong to other refs, so refs can be fetched in any order.

Note [back-pressure]
~~~~~~~~~~~~~~~~~~~~
Every channel has ``max_inflight_executions`` slots. ``execute`` counts the executions whose
results the driver has not read yet; at the limit it reads the oldest result into its buffer
(waiting up to ``submit_timeout``) before it writes the next input, so the input write never
waits for a slot and ``execute`` blocks instead of failing.

Note [dead actors]
~~~~~~~~~~~~~~~~~~
A channel raises ``ChannelBrokenError`` when the process at its other end is gone (a channel
knows processes, not actors); a loop that sees it closes every channel of the graph (Note
[loop exit] in executor.py). The driver also checks the processes of all actors between the
slices of its waits. Either way the graph is marked
broken: the driver turns what it saw into ``ActorDiedError`` (graph_health.py), and every
pending and later ``get`` and every ``execute`` raises that, and
``teardown`` still frees everything. Surviving actors stay usable, also for a new graph.
Results that were complete before the death are not lost: an output channel still yields the
values written to it before it was closed (Note [channel close] in channels/interface.py), so
their ``get`` returns them; only executions that had not finished raise.

Note [fast fail]
~~~~~~~~~~~~~~~~
As in Ray, a get on any output of an execution raises as soon as one of its outputs is an
error: while the driver waits for one output channel it also polls the others of the same
execution (between the slices of its wait), and the first error becomes the result of every
output of that execution. Its other outputs are still read from their channels later (each
channel is read in execution order) and dropped (``ResultBuffer`` in results.py).

Note [capacity]
~~~~~~~~~~~~~~~
By default nothing is refused: ``execute`` waits for room (Note [back-pressure]) and results
read ahead wait in the buffer until fetched. A graph compiled with ``max_buffered_results``
(Ray's ``_max_buffered_results``, or ``DAGContext``) raises ``RayCgraphCapacityExceeded``
instead of reading another execution into a full buffer, as Ray does.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ember.dag.nodes import DAGNode
from ember._system.process import pid_alive
from ember.dynamic.api.driver import get
from ember.engine import registry
from ember.engine.channel_setup import create_channels
from ember.engine.comm_schedule import order_communication
from ember.engine.actor_side import LoopStarted, start_actor_loop, stop_actor_loop
from ember.engine.executor import ExecutorLoop, pack_inputs
from ember.engine.graph_health import HOST, GraphHealth
from ember.engine.groups import store_address
from ember.engine.options import CompileOptions
from ember.engine.plan import DRIVER, DRIVER_TASKS, Plan, make_plan
from ember.engine.refs import CompiledDAGFuture, CompiledDAGRef, CompiledDAGRefList
from ember.engine.results import ResultBuffer, remaining, submit_timeout_error
from ember.engine.schedule import Schedule, driver_schedule, dry_run, make_schedules
from ember.engine.endpoints import Endpoint, describe_process
from ember.engine.transports import needs_transports, plan_transports
from ember.engine.validate import input_check, validate
from ember.exceptions import (ChannelBrokenError, ChannelClosedError, ChannelTimeoutError,
                              CompileError)

logger = logging.getLogger(__name__)

def compile_dag(root: DAGNode, **options: Any) -> "CompiledDAG":
    """Compile the graph ending at ``root`` (see ``CompileOptions`` for the options)."""
    return CompiledDAG(root, CompileOptions.from_kwargs(options))


_GRAPH_COUNTER = itertools.count()


class CompiledDAG:
    """A compiled graph: ``execute`` / ``execute_async`` runs it, ``teardown`` frees it."""

    def __init__(self, root: DAGNode, options: CompileOptions) -> None:
        t0 = time.perf_counter()
        self._options = options
        self._graph_id = f"{next(_GRAPH_COUNTER)}-{uuid.uuid4().hex[:8]}"
        self._channels: dict[int, Any] = {}
        self._health = GraphHealth(self._channels)
        self._buffer: ResultBuffer | None = None   # made once the output readers are
        self._driver_loop: ExecutorLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._submit_lock = threading.Lock()
        self._teardown_lock = threading.Lock()
        self._next_submit = 0

        graph = validate(root)
        plan = make_plan(graph)
        endpoints = self._endpoints(plan)
        if needs_transports(plan):
            plan_transports(plan, endpoints, self._graph_id, options.overlap_gpu_communication)
        schedules = order_communication(plan, make_schedules(plan))
        dry_run(plan, schedules)
        self._plan: Plan = plan
        self._schedules: dict[str, Schedule] = schedules
        self._driver_schedule = driver_schedule(plan)
        self._input_check = input_check(graph)
        self._num_outputs = len(graph.outputs)
        self._returns_list = graph.multi_output or self._num_outputs != 1
        try:
            self._start(plan, schedules, endpoints)
        except BaseException:
            self.teardown()
            raise
        self.compile_time_s = time.perf_counter() - t0
        registry.register(self)

    # -- starting --------------------------------------------------------------------------------

    def _endpoints(self, plan: Plan) -> dict[str, Endpoint]:
        """Where every participant runs: node, process and GPUs (asked of each actor, unless
        only the nodes matter and this process knows them from the actors' leases)."""
        driver = describe_process(driver=True)
        endpoints = {DRIVER: driver, DRIVER_TASKS: driver}
        gpus = needs_transports(plan)
        nodes = {a: h._ember_node() for a, h in plan.actors.items()}
        if not gpus and None not in nodes.values():   # only nodes matter: no round trip
            endpoints.update((a, Endpoint(("", 0), node=node)) for a, node in nodes.items())
            return endpoints
        refs = {a: _run_in_actor(h, describe_process, False, gpus)
                for a, h in plan.actors.items()}
        for actor_id, ref in refs.items():
            endpoints[actor_id] = _get(ref, self._options.start_timeout)
        return endpoints

    def _call(self, participant: str, fn: Any, args: tuple) -> Any:
        """Start ``fn(instance, *args)`` where ``participant`` runs; return its waiter."""
        handle = self._plan.actors.get(participant)
        if handle is None:   # the driver, or its task thread: here
            result = fn(None, *args)
            return lambda: result
        ref = _run_in_actor(handle, fn, *args)
        return lambda: _get(ref, self._options.start_timeout)

    def _start(self, plan: Plan, schedules: dict[str, Schedule],
               endpoints: dict[str, Endpoint]) -> None:
        options = self._options
        create_channels(plan, endpoints, options, self._channels, self._call)
        graph = plan.graph
        n = len(graph.nodes)
        store = store_address() if plan.groups else None
        pending = []
        for actor_id, handle in plan.actors.items():
            sched = schedules[actor_id]
            used = {op.channel for op in sched.ops if op.channel >= 0}
            channels = {cid: self._channels[cid] for cid in used}
            groups = tuple(g for g in plan.groups if actor_id in g.actors)
            ref = _run_in_actor(handle, start_actor_loop, self._graph_id, sched, channels, n,
                                actor_id, groups, store, options.overlap_gpu_communication)
            pending.append((actor_id, ref))
        problems = []
        for actor_id, ref in pending:
            reply = _get(ref, options.start_timeout)
            if isinstance(reply, LoopStarted):
                self._health.actor_procs[actor_id] = (reply.host, reply.pid)
            else:
                problems.append(reply.reason)
        if problems:
            raise CompileError("; ".join(problems))
        if DRIVER_TASKS in schedules:
            sched = schedules[DRIVER_TASKS]
            used = {op.channel for op in sched.ops if op.channel >= 0}
            self._driver_loop = ExecutorLoop(self._graph_id, sched,
                                             {cid: self._channels[cid] for cid in used},
                                             None, "the driver's task thread", n)
            self._driver_loop.start()
        input_cid = plan.remote.get(graph.input)
        self._input_writer = self._channels[input_cid].writer() if input_cid is not None else None
        readers = [(op.node, self._channels[op.channel].reader(op.reader))
                   for op in self._driver_schedule.ops if op.kind == "READ"]
        for _, reader in readers:
            reader.attach()
        self._buffer = ResultBuffer(options, self._health, graph.outputs, readers)
        if self._input_writer is not None:
            self._input_writer.attach()

    # -- executing -------------------------------------------------------------------------------

    def execute(self, *args: Any, **kwargs: Any) -> CompiledDAGRef | CompiledDAGRefList:
        """Start one execution with these arguments and return its ref (for a MultiOutputNode,
        a list of refs, one per output, as Ray does; its ``get()`` gets them all). Returns at
        once unless ``max_inflight_executions`` are pending, then waits (Note [back-pressure])
        up to ``submit_timeout`` (Note [timeouts] in ember/exceptions.py)."""
        health = self._health
        if health.torn_down or health.broken is not None:
            health.check_usable()
        self._input_check(args, kwargs)
        timeout = self._options.submit_timeout
        with self._submit_lock:
            deadline = None
            if self._next_submit - self._buffer.next_read >= self._options.max_inflight_executions:
                deadline = None if timeout is None else time.monotonic() + timeout
                self._wait_for_room(deadline, timeout)
            try:
                self._input_writer.write(pack_inputs(args, kwargs), timeout if deadline is None
                                         else remaining(deadline, None))
            except ChannelTimeoutError:
                raise submit_timeout_error(self._options, timeout) from None
            except ChannelClosedError:
                health.check_usable()
                raise
            except ChannelBrokenError as exc:
                raise health.broken_channel(exc) from None
            seq = self._next_submit
            self._next_submit = seq + 1
        if not self._returns_list:
            return CompiledDAGRef(self, seq, 0)
        return CompiledDAGRefList(CompiledDAGRef(self, seq, i) for i in range(self._num_outputs))

    def _wait_for_room(self, deadline: float | None, timeout: float | None) -> None:
        """Read the oldest results into the buffer until fewer than the limit are pending."""
        limit, buffer = self._options.max_inflight_executions, self._buffer
        while self._next_submit - buffer.next_read >= limit:
            if not buffer.read_lock.acquire(timeout=remaining(deadline, -1)):
                raise submit_timeout_error(self._options, timeout)
            try:
                if self._next_submit - buffer.next_read >= limit:
                    buffer.read_next(deadline, timeout, submitting=True)
            finally:
                buffer.read_lock.release()
        self._health.check_usable()

    async def execute_async(self, *args: Any,
                            **kwargs: Any) -> CompiledDAGFuture | list[CompiledDAGFuture]:
        """Start one execution like ``execute``, as Ray: ``fut = await cdag.execute_async(x)``
        then ``value = await fut`` (a list of futures for a MultiOutputNode). Under
        back-pressure the wait for room runs off the event loop (Note [two awaits] in refs.py);
        ``await cdag.execute(x)`` gives the value with one await."""
        if self._next_submit - self._buffer.next_read >= self._options.max_inflight_executions:
            refs = await asyncio.get_running_loop().run_in_executor(
                self._async_pool(), functools.partial(self.execute, *args, **kwargs))
        else:
            refs = self.execute(*args, **kwargs)
        if isinstance(refs, list):
            return [CompiledDAGFuture(ref) for ref in refs]
        return CompiledDAGFuture(refs)

    # -- teardown --------------------------------------------------------------------------------

    def __enter__(self) -> "CompiledDAG":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    def teardown(self) -> None:
        """End every loop of the graph and free every channel; idempotent. Pending results
        are lost (their ``get`` raises DAGTeardownError); the actors stay usable."""
        with self._teardown_lock:
            if self._health.torn_down:
                return
            self._health.torn_down = True
        registry.unregister(self)
        for channel in self._channels.values():
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        wait = self._options.teardown_timeout
        if self._driver_loop is not None:
            self._driver_loop.stop(wait)
        stops = []
        for actor_id, handle in self._plan.actors.items():
            proc = self._health.actor_procs.get(actor_id)
            if proc is None or (proc[0] == HOST and not pid_alive(proc[1])):
                continue
            try:
                stops.append((actor_id, _run_in_actor(handle, stop_actor_loop, self._graph_id,
                                                         actor_id, wait)))
            except Exception:  # noqa: BLE001 - an actor that cannot be reached has no loop
                pass
        deadline = time.monotonic() + wait + 5.0
        for actor_id, ref in stops:
            try:
                if not _get(ref, max(0.1, deadline - time.monotonic())):
                    logger.warning("the loop of compiled graph %s in actor %s did not end "
                                   "within %s s (a method is still running)",
                                   self._graph_id, actor_id, wait)
            except Exception:  # noqa: BLE001 - a dead or busy actor: its loop sees the close
                pass
        for channel in self._channels.values():
            try:
                channel.destroy()
            except Exception:  # noqa: BLE001
                logger.exception("could not free channel %r", channel)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def __del__(self) -> None:
        # A dropped graph frees its memory; its loops end when they see the channels closed.
        health = getattr(self, "_health", None)
        if health is None or health.torn_down:
            return
        health.torn_down = True
        for channel in getattr(self, "_channels", {}).values():
            try:
                channel.destroy()
            except Exception:  # noqa: BLE001
                pass

    # -- inspection ------------------------------------------------------------------------------

    def get_id(self) -> str:
        """The id of this compiled graph (as Ray's ``CompiledDAG.get_id``)."""
        return self._graph_id

    def num_actors(self) -> int:
        """How many actors run loops of this graph."""
        return len(self._plan.actors)

    @property
    def plan(self) -> Plan:
        """The plan: where each node runs and each channel (plain data)."""
        return self._plan

    @property
    def schedules(self) -> dict[str, Schedule]:
        """Every participant's schedule, the driver's included (plain data)."""
        out = dict(self._schedules)
        out[DRIVER] = self._driver_schedule
        return out

    def visualize(self, filename: str | None = None, format: str | None = None,
                  view: bool = False, channel_details: bool = True) -> str:
        """Return the graph (actors, methods, channels and transports) as Graphviz dot text;
        with ``filename`` also write ``filename.dot`` and, with ``format`` ("png", "svg") and
        Graphviz installed, ``filename.<format>``. Ray's ``channel_details`` is accepted: the
        channels are always shown."""
        from ember.engine.visualize import render
        return render(self, filename=filename, format=format, view=view)

    def __repr__(self) -> str:
        health = self._health
        state = "torn down" if health.torn_down else ("broken" if health.broken else "live")
        return (f"CompiledDAG({self._graph_id}, {len(self._plan.graph.nodes)} nodes, "
                f"{len(self._plan.actors)} actors, {state})")

    def _async_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._teardown_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        max_workers=self._options.max_inflight_executions + 1,
                        thread_name_prefix=f"ember-dag-{self._graph_id}")
        return self._pool


# -- helpers --------------------------------------------------------------------------------------

def _run_in_actor(handle: Any, fn: Any, *args: Any) -> Any:
    """Run ``fn(actor_instance, *args)`` in the actor's process; return the ObjectRef."""
    run = handle._ember_run
    remote = getattr(run, "remote", None)
    return remote(fn, *args) if remote is not None else run(fn, *args)


def _get(ref: Any, timeout: float | None) -> Any:
    """Wait for an ObjectRef of the dynamic layer (or anything with ``__ember_get__``)."""
    if hasattr(ref, "__ember_get__"):
        return ref.__ember_get__(timeout)
    return get(ref, timeout=timeout)


