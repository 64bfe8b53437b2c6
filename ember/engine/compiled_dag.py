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
knows processes, not actors); a loop that sees it closes every channel of the graph (Note [loop exit] in executor.py). The driver also checks
the processes of all actors between the slices of its waits. Either way the graph is marked
broken: the driver turns what it saw into ``ActorDiedError`` (``_broken_channel``), and every
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
channel is read in execution order) and dropped (``_failed_fast``).

Note [capacity]
~~~~~~~~~~~~~~~
By default nothing is refused: ``execute`` waits for room (Note [back-pressure]) and results
read ahead wait in the buffer until fetched. A graph compiled with ``max_buffered_results``
(Ray's ``_max_buffered_results``, or ``DAGContext``) raises ``RayCgraphCapacityExceeded``
instead of reading another execution into a full buffer, as Ray does.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import logging
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ember.dag.nodes import DAGNode
from ember.dynamic.process import pid_alive
from ember.engine import registry
from ember.engine.channel_setup import create_channels
from ember.engine.comm_schedule import order_communication
from ember.engine.executor import (ExecutorLoop, RaisedError, pack_inputs, start_actor_loop,
                                   stop_actor_loop)
from ember.engine.groups import store_address
from ember.engine.options import CompileOptions
from ember.engine.plan import DRIVER, DRIVER_TASKS, Plan, make_plan
from ember.engine.refs import CompiledDAGFuture, CompiledDAGRef, CompiledDAGRefList, unwrap
from ember.engine.schedule import Schedule, driver_schedule, dry_run, make_schedules
from ember.engine.endpoints import Endpoint, describe_process
from ember.engine.transports import needs_transports, plan_transports
from ember.engine.validate import input_check, validate
from ember.exceptions import (ActorDiedError, CapacityExceededError, ChannelBrokenError,
                              ChannelClosedError, ChannelTimeoutError, CompileError,
                              DAGTeardownError, EmberError)

logger = logging.getLogger(__name__)

_SLICE_S = 0.25          # how often a waiting driver checks the actors' processes
_FAILED_FAST = object()  # what a read gives when another output failed (Note [fast fail])
_DIED = "The actor died unexpectedly before finishing this task. "   # Ray's words
_HOST = socket.gethostname()


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
        self._torn_down = False
        self._broken: BaseException | None = None
        self._channels: dict[int, Any] = {}
        self._driver_loop: ExecutorLoop | None = None
        self._actor_procs: dict[str, tuple[str, int]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._submit_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._teardown_lock = threading.Lock()
        self._results_lock = threading.Lock()      # guards _results (never held while waiting)
        self._next_submit = 0
        self._next_read = 0
        self._results: dict[int, list] = {}      # seq -> (ok, value) per output, None: taken
        self._partial: dict[int, Any] = {}       # output node -> value, of the execution read
        self._dropped: deque[tuple[int, int]] = deque()   # (seq, output) of refs dropped
        self._dropped_unread: set[tuple[int, int]] = set()
        self._failed_fast = -1                   # execution failed fast, still being read

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
            if reply[0] == "ok":
                self._actor_procs[actor_id] = (reply[1], reply[2])
            else:
                problems.append(reply[1])
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
        self._output_readers: list[tuple[int, Any]] = []
        for op in self._driver_schedule.ops:
            if op.kind == "READ":
                self._output_readers.append((op.node, self._channels[op.channel].reader(op.reader)))
        for _, reader in self._output_readers:
            reader.attach()
        if self._input_writer is not None:
            self._input_writer.attach()

    # -- executing -------------------------------------------------------------------------------

    def execute(self, *args: Any, **kwargs: Any) -> CompiledDAGRef | CompiledDAGRefList:
        """Start one execution with these arguments and return its ref (for a MultiOutputNode,
        a list of refs, one per output, as Ray does; its ``get()`` gets them all). Returns at
        once unless ``max_inflight_executions`` are pending, then waits (Note [back-pressure])."""
        if self._torn_down or self._broken is not None:
            self._check_usable()
        self._input_check(args, kwargs)
        timeout = self._options.submit_timeout
        with self._submit_lock:
            deadline = None
            if self._next_submit - self._next_read >= self._options.max_inflight_executions:
                deadline = None if timeout is None else time.monotonic() + timeout
                self._wait_for_room(deadline, timeout)
            try:
                self._input_writer.write(pack_inputs(args, kwargs), timeout if deadline is None
                                         else _remaining(deadline, None))
            except ChannelTimeoutError:
                raise self._submit_timeout_error(timeout) from None
            except ChannelClosedError:
                self._check_usable()
                raise
            except ChannelBrokenError as exc:
                raise self._broken_channel(exc) from None
            seq = self._next_submit
            self._next_submit = seq + 1
        if not self._returns_list:
            return CompiledDAGRef(self, seq, 0)
        return CompiledDAGRefList(CompiledDAGRef(self, seq, i) for i in range(self._num_outputs))

    def _wait_for_room(self, deadline: float | None, timeout: float | None) -> None:
        """Read the oldest results into the buffer until fewer than the limit are pending."""
        limit = self._options.max_inflight_executions
        while self._next_submit - self._next_read >= limit:
            if not self._read_lock.acquire(timeout=_remaining(deadline, -1)):
                raise self._submit_timeout_error(timeout)
            try:
                if self._next_submit - self._next_read >= limit:
                    self._read_next(deadline, timeout, submitting=True)
            finally:
                self._read_lock.release()
        self._check_usable()

    async def execute_async(self, *args: Any,
                            **kwargs: Any) -> CompiledDAGFuture | list[CompiledDAGFuture]:
        """Start one execution like ``execute``, as Ray: ``fut = await cdag.execute_async(x)``
        then ``value = await fut`` (a list of futures for a MultiOutputNode). Under
        back-pressure the wait for room runs off the event loop (Note [two awaits] in refs.py);
        ``await cdag.execute(x)`` gives the value with one await."""
        if self._next_submit - self._next_read >= self._options.max_inflight_executions:
            refs = await asyncio.get_running_loop().run_in_executor(
                self._async_pool(), functools.partial(self.execute, *args, **kwargs))
        else:
            refs = self.execute(*args, **kwargs)
        if isinstance(refs, list):
            return [CompiledDAGFuture(ref) for ref in refs]
        return CompiledDAGFuture(refs)

    def _submit_timeout_error(self, timeout: float | None) -> ChannelTimeoutError:
        return ChannelTimeoutError(
            f"execute waited {timeout} s for room: max_inflight_executions="
            f"{self._options.max_inflight_executions} executions are pending and the oldest has "
            f"not finished; get results sooner, or compile with a larger submit_timeout or "
            f"max_inflight_executions")

    def _get(self, seq: int, index: int, timeout: float | None) -> Any:
        """Return output ``index`` of execution ``seq`` (for ``CompiledDAGRef.get``)."""
        if seq not in self._results:
            self._wait_for(seq, timeout)
        return unwrap(self._take(seq, index))

    def _wait_for(self, seq: int, timeout: float | None) -> None:
        """Read results (in execution order) until execution ``seq``'s is in the buffer."""
        if timeout is None:
            timeout = self._options.get_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while seq not in self._results:
            if seq < self._next_read:
                raise EmberError(f"the result of execution {seq} was already handed out")
            self._check_pending(seq)
            if not self._read_lock.acquire(timeout=_remaining(deadline, -1)):
                raise self._get_timeout_error(seq, timeout)
            try:
                while seq not in self._results and seq >= self._next_read:
                    self._check_pending(seq)
                    self._read_next(deadline, timeout, submitting=False, waiting_for=seq)
            finally:
                self._read_lock.release()

    def _take(self, seq: int, index: int, missing_ok: bool = False) -> tuple[bool, Any] | None:
        """Hand out output ``index`` of a buffered execution; forget the execution once every
        output was handed out (or its ref dropped)."""
        with self._results_lock:
            parts = self._results.get(seq)
            part = parts[index] if parts is not None else None
            if part is None:
                if missing_ok:
                    return None
                raise EmberError(f"output {index} of execution {seq} was already handed out")
            parts[index] = None
            if not any(parts):
                del self._results[seq]
        return part

    def _check_pending(self, seq: int) -> None:
        if seq in self._results:
            return
        if self._broken is not None:
            raise _copy_error(self._broken)
        if self._torn_down:
            raise DAGTeardownError(f"Channel closed: the compiled graph was torn down before "
                                   f"execution {seq} finished; compile the graph again to run it")

    def _get_timeout_error(self, seq: int, timeout: float | None) -> ChannelTimeoutError:
        return ChannelTimeoutError(
            f"execution {seq} of the compiled graph did not finish within {timeout} s; it is "
            f"still running: call get again, or pass a longer timeout")

    def _read_next(self, deadline: float | None, timeout: float | None, submitting: bool,
                   waiting_for: int = -1) -> None:
        """Read the outputs of the oldest unread execution into the result buffer (under the
        read lock). A timeout keeps what was read, so the next call goes on from there."""
        seq = self._next_read
        limit = self._options.max_buffered_results
        if limit is not None and len(self._results) >= limit and seq != self._failed_fast:
            raise CapacityExceededError(
                f"The compiled graph can't have more than {limit} buffered results, and you "
                f"currently have {len(self._results)} buffered results. Call `ray.get()` on "
                "CompiledDAGRef's (or await on CompiledDAGFuture's) to retrieve results, or "
                "increase `_max_buffered_results` if buffering is desired, note that this "
                "will increase driver memory usage.")
        for node, reader in self._output_readers:
            if node in self._partial:
                continue
            value = self._read_output(reader, deadline, timeout, submitting, waiting_for)
            if value is _FAILED_FAST:
                return
            self._partial[node] = value
            if type(value) is RaisedError and self._fail_fast(seq, value):
                return
        parts: list[tuple[bool, Any] | None] = []
        for node in self._plan.graph.outputs:
            value = self._partial[node]
            parts.append((False, value.exc) if type(value) is RaisedError else (True, value))
        self._partial.clear()
        if seq == self._failed_fast:     # its result is the error, handed out already
            self._failed_fast = -1
        else:
            self._results[seq] = parts   # before _next_read moves: see _wait_for
        self._next_read = seq + 1
        while self._dropped:  # refs dropped without get: their outputs are not kept
            dropped, index = self._dropped.popleft()
            if dropped >= self._next_read:
                self._dropped_unread.add((dropped, index))
            else:
                self._take(dropped, index, missing_ok=True)
        if self._dropped_unread:
            for index in range(len(parts)):
                if (seq, index) in self._dropped_unread:
                    self._dropped_unread.discard((seq, index))
                    self._take(seq, index, missing_ok=True)

    def _fail_fast(self, seq: int, error: RaisedError) -> bool:
        """Make ``error`` the result of every output of execution ``seq`` while some of its
        outputs are unread; return whether it did (Note [fast fail])."""
        if seq == self._failed_fast or len(self._partial) == len(self._output_readers):
            return False
        self._failed_fast = seq
        with self._results_lock:
            self._results[seq] = [(False, copy.copy(error.exc)) for _ in range(self._num_outputs)]
        return True

    def _poll_outputs(self, reading: Any) -> bool:
        """Read the outputs of the current execution that are already there (all but the
        one being waited for); return whether one of them failed fast."""
        for node, reader in self._output_readers:
            if reader is reading or node in self._partial:
                continue
            try:
                value = reader.read_nowait()
            except ChannelTimeoutError:
                continue
            except (ChannelClosedError, ChannelBrokenError):
                return False     # the read waited for sees it too, and reports it
            self._partial[node] = value
            if type(value) is RaisedError and self._fail_fast(self._next_read, value):
                return True
        return False

    def _read_output(self, reader: Any, deadline: float | None, timeout: float | None,
                     submitting: bool, waiting_for: int) -> Any:
        poll = len(self._output_readers) > 1 and self._next_read != self._failed_fast
        while True:
            remaining = _remaining(deadline, None)
            wait = _SLICE_S if remaining is None else min(_SLICE_S, remaining)
            try:
                value = reader.read(wait)
            except ChannelTimeoutError:
                if poll and self._poll_outputs(reader):
                    return _FAILED_FAST
                self._check_actors()
                if remaining is not None and remaining <= _SLICE_S:
                    if submitting:
                        raise self._submit_timeout_error(timeout) from None
                    raise self._get_timeout_error(waiting_for, timeout) from None
                continue
            except ChannelClosedError:
                if self._torn_down:
                    raise DAGTeardownError("Channel closed: the compiled graph was torn down "
                                           "while a result was awaited") from None
                self._check_actors()
                self._mark_broken(ActorDiedError(
                    _DIED + "a loop of the compiled graph ended because a process of the graph "
                    "died or failed (see the actors' logs); tear the graph down and compile it "
                    "again"))
                raise _copy_error(self._broken) from None
            except ChannelBrokenError as exc:
                raise self._broken_channel(exc) from None
            return value   # zero-copy arrays stay valid while they live (Note [zero-copy lifetime])

    # -- failure ---------------------------------------------------------------------------------

    def _check_actors(self) -> None:
        """Raise ActorDiedError (and mark the graph broken) if an actor's process is gone."""
        for actor_id, (host, pid) in self._actor_procs.items():
            if host == _HOST and not pid_alive(pid):
                self._mark_broken(ActorDiedError(
                    f"{_DIED}actor {actor_id} (pid {pid}) of the compiled graph died; the graph "
                    f"cannot run any more: tear it down and compile a new one over live actors"))
                raise _copy_error(self._broken)

    def _broken_channel(self, exc: ChannelBrokenError) -> ActorDiedError:
        """The ActorDiedError of a channel whose peer process died; the graph is broken."""
        self._mark_broken(ActorDiedError(_DIED + str(exc)))
        return _copy_error(self._broken)

    def _mark_broken(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc
            for channel in self._channels.values():
                try:
                    channel.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass

    def _check_usable(self) -> None:
        if self._torn_down:
            raise DAGTeardownError("Channel closed: this compiled graph was torn down; compile "
                                   "the graph again to run it")
        if self._broken is not None:
            raise _copy_error(self._broken)

    # -- teardown --------------------------------------------------------------------------------

    def __enter__(self) -> "CompiledDAG":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    def teardown(self) -> None:
        """End every loop of the graph and free every channel; idempotent. Pending results
        are lost (their ``get`` raises DAGTeardownError); the actors stay usable."""
        with self._teardown_lock:
            if self._torn_down:
                return
            self._torn_down = True
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
            proc = self._actor_procs.get(actor_id)
            if proc is None or (proc[0] == _HOST and not pid_alive(proc[1])):
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
        if getattr(self, "_torn_down", True):
            return
        self._torn_down = True
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
        state = "torn down" if self._torn_down else ("broken" if self._broken else "live")
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

def _copy_error(exc: BaseException) -> BaseException:
    """A fresh instance of a stored error, so each raise has its own traceback."""
    try:
        return type(exc)(*exc.args)
    except Exception:  # noqa: BLE001
        return exc


def _remaining(deadline: float | None, none_value: Any) -> Any:
    if deadline is None:
        return none_value
    return max(0.0, deadline - time.monotonic())


def _run_in_actor(handle: Any, fn: Any, *args: Any) -> Any:
    """Run ``fn(actor_instance, *args)`` in the actor's process; return the ObjectRef."""
    run = handle._ember_run
    remote = getattr(run, "remote", None)
    return remote(fn, *args) if remote is not None else run(fn, *args)


def _get(ref: Any, timeout: float | None) -> Any:
    """Wait for an ObjectRef of the dynamic layer (or anything with ``__ember_get__``)."""
    if hasattr(ref, "__ember_get__"):
        return ref.__ember_get__(timeout)
    import ember
    return ember.get(ref, timeout=timeout)


