"""The executor loop: one thread per participant and graph that repeats its schedule forever.

Inside an actor the loop runs on a daemon thread started through ``handle._ember_run``, so the
actor's ordinary methods stay callable, and several graphs can share an actor (one loop each).

Note [errors as values]
~~~~~~~~~~~~~~~~~~~~~~~
An exception raised by a method becomes a ``RaisedError`` value that takes the place of the
method's result: it is written downstream like any value, every node that receives one passes it
on without running, and the driver raises it at ``get``. The loop itself keeps going, so the next
execution works.

Note [loop exit]
~~~~~~~~~~~~~~~~
A loop ends when a channel is closed (teardown) or when a channel reports a dead peer. In the
second case it closes every channel it uses, which wakes every other loop and the driver at once:
the graph is broken, and the driver turns that into ``ActorDiedError`` for every pending ``get``
whose result was not complete: a result already written to an output channel is still read
(Note [channel close] in channels/interface.py). A read drains what was written before a close,
so after a teardown a loop may still run one buffered execution; its write then fails.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any, Callable

from ember.channels.interface import ChannelReader
from ember.dynamic.api.driver import get
from ember.engine.schedule import COMPUTE, READ, WRITE, NodeRef, NodeSpec, Schedule
from ember.exceptions import (ActorDiedError, ChannelBrokenError, ChannelClosedError,
                              GetTimeoutError, SerializationError, TaskError,
                              TensorTransportError)

logger = logging.getLogger(__name__)


class RaisedError:
    """An exception travelling through the graph in place of a value (Note [errors as values])."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple:
        return (RaisedError, (self.exc,))

    def __repr__(self) -> str:
        return f"RaisedError({self.exc!r})"


class Inputs:
    """The arguments of one ``execute`` call as the input channel carries them, unless the call
    has exactly one positional argument: that one travels bare, the common case made cheap
    (a bare numpy array takes the array fast path of serialization)."""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.args = args
        self.kwargs = kwargs

    def __reduce__(self) -> tuple:
        return (Inputs, (self.args, self.kwargs))


def pack_inputs(args: tuple, kwargs: dict) -> Any:
    """The input channel's value for ``execute(*args, **kwargs)``."""
    return args[0] if len(args) == 1 and not kwargs else Inputs(args, kwargs)


def unpack_inputs(payload: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` back from the input channel's value."""
    return (payload.args, payload.kwargs) if type(payload) is Inputs else ((payload,), {})


def first_input(payload: Any) -> Any:
    """The first positional argument, which a bare ``InputNode`` stands for."""
    return payload.args[0] if type(payload) is Inputs else payload


class ExecutorLoop:
    """Runs one participant's schedule of one graph, once per execution, on its own thread."""

    def __init__(self, graph_id: str, schedule: Schedule, channels: dict[int, Any],
                 instance: Any, where: str, num_nodes: int, overlap: bool = False) -> None:
        self.graph_id = graph_id
        self._overlap = overlap
        self.schedule = schedule
        self.where = where
        self.error: BaseException | None = None
        self._channels = channels
        self._instance = instance
        self._values: list[Any] = [None] * num_nodes     # this execution's value per node
        self._nones = [None] * num_nodes
        self._held: list[Any] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.on_exit: Callable[[], None] | None = None
        self._readers: dict[tuple[int, int], Any] = {}
        self._writers: dict[int, Any] = {}
        for op in schedule.ops:
            if op.kind == READ and (op.channel, op.reader) not in self._readers:
                self._readers[(op.channel, op.reader)] = channels[op.channel].reader(op.reader)
            elif op.kind == WRITE and op.channel not in self._writers:
                self._writers[op.channel] = channels[op.channel].writer()
        for handle in (*self._readers.values(), *self._writers.values()):
            attach = getattr(handle, "attach", None)
            if attach is not None:   # register this process now, so peers watch it at once
                attach()
        self._steps = [self._compile(op) for op in schedule.ops]

    # -- building the steps ----------------------------------------------------------------------

    def _compile(self, op) -> Callable[[], None]:
        values, held = self._values, self._held
        pos = op.node
        if op.kind == READ:
            reader = self._readers[(op.channel, op.reader)]
            if type(reader).release is ChannelReader.release:   # nothing to give back
                def read() -> None:
                    values[pos] = reader.read(None)
                return read

            def read_and_hold() -> None:
                values[pos] = reader.read(None)
                held.append(reader)
            return read_and_hold
        if op.kind == WRITE:
            writer = self._writers[op.channel]
            where = self.where

            def write() -> None:
                try:
                    writer.write(values[pos], None)
                except (SerializationError, TensorTransportError) as exc:  # nothing was written
                    writer.write(RaisedError(TaskError.wrap(exc, where, traceback.format_exc())),
                                 None)
            return write
        if op.kind == COMPUTE:
            return self._compile_compute(pos, self.schedule.nodes[pos])
        raise ValueError(f"unknown operation {op!r}")

    def _compile_compute(self, pos: int, spec: NodeSpec) -> Callable[[], None]:
        values = self._values
        where = f"{spec.label} in {self.where}"
        if spec.kind == "output":
            parent, index = spec.args[0].pos, spec.index

            def pick() -> None:
                value = values[parent]
                values[pos] = value if type(value) is RaisedError else value[index]
            return pick
        if spec.kind == "attribute":
            source, key = spec.args[0].pos, spec.key

            def attribute() -> None:
                payload = values[source]
                if type(payload) is RaisedError:
                    values[pos] = payload
                    return
                args, kwargs = unpack_inputs(payload)
                values[pos] = args[key] if isinstance(key, int) else kwargs[key]
            return attribute
        if spec.kind == "collective":
            from ember.engine.collectives import collective_step
            return collective_step(values, pos, spec, where, self._overlap, RaisedError)
        if spec.kind == "method":
            fn = getattr(self._instance, spec.name)
            check = _returns_checker(spec)
        elif spec.kind == "function":
            fn = _task_runner(spec.function, lambda: self._stopping)
            check = None
        else:
            raise ValueError(f"unknown node kind {spec.kind!r}")
        get_args = _args_getter(values, spec.args, spec.kwargs)

        def compute() -> None:
            args, kwargs, error = get_args()
            if error is not None:
                values[pos] = error
                return
            try:
                result = fn(*args, **kwargs)
                if check is not None:
                    check(result)
            except ChannelClosedError:
                raise
            except TaskError as exc:
                result = RaisedError(exc)
            except Exception as exc:  # noqa: BLE001 - the user's error travels as a value
                result = RaisedError(TaskError.wrap(exc, where, _user_traceback(exc)))
            values[pos] = result
        return compute

    # -- running ---------------------------------------------------------------------------------

    def run_once(self) -> None:
        """Run one execution of the schedule."""
        try:
            for step in self._steps:
                step()
        finally:
            self._values[:] = self._nones      # drop this execution's values (and their pins)
            if self._held:
                self._release_held()

    def _release_held(self) -> None:
        """Give back what this execution's reads hold (GPU slots)."""
        held = self._held
        try:
            for reader in held:
                reader.release()
        finally:
            held.clear()

    def run(self) -> None:
        """Repeat the schedule until a channel closes (Note [loop exit])."""
        try:
            while not self._stopping:
                self.run_once()
        except ChannelClosedError:
            pass
        except BaseException as exc:  # noqa: BLE001 - a dead peer or a broken loop ends the graph
            self.error = exc
            if not isinstance(exc, (ActorDiedError, ChannelBrokenError)):
                logger.error("executor loop of graph %s in %s failed:\n%s", self.graph_id,
                             self.where, traceback.format_exc())
            self.close_channels()
        finally:
            for handle in (*self._readers.values(), *self._writers.values()):
                try:
                    handle.close()   # also frees what a handle holds itself (GPU buffers)
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            if self.on_exit is not None:
                self.on_exit()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, daemon=True,
                                        name=f"ember-dag-{self.graph_id}")
        self._thread.start()

    def close_channels(self) -> None:
        for channel in self._channels.values():
            try:
                channel.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def stop(self, timeout: float | None) -> bool:
        """Ask the loop to end, close its channels, wait up to ``timeout``; True if it ended."""
        self._stopping = True
        self.close_channels()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True


def _user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` from the user's method on (without the loop's own frame)."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _args_getter(values: list, args: tuple, kwargs: dict) -> Callable[[], tuple]:
    """Return a function giving (args, kwargs, first RaisedError or None) for this execution."""
    if len(args) == 1 and not kwargs and isinstance(args[0], NodeRef):
        src, whole_input = args[0].pos, args[0].input

        def one() -> tuple:
            value = values[src]
            if type(value) is RaisedError:
                return (), {}, value
            return ((first_input(value),) if whole_input else (value,)), {}, None
        return one

    def resolve(item: Any) -> Any:
        if isinstance(item, NodeRef):
            value = values[item.pos]
            if item.input and type(value) is not RaisedError:
                value = first_input(value)
            return value
        return item

    def general() -> tuple:
        call_args = [resolve(a) for a in args]
        call_kwargs = {k: resolve(v) for k, v in kwargs.items()}
        for value in call_args:
            if type(value) is RaisedError:
                return (), {}, value
        for value in call_kwargs.values():
            if type(value) is RaisedError:
                return (), {}, value
        return call_args, call_kwargs, None
    return general


def _returns_checker(spec: NodeSpec) -> Callable[[Any], None] | None:
    if spec.num_returns <= 1:
        return None
    n = spec.num_returns

    def check(result: Any) -> None:
        if not isinstance(result, (tuple, list)) or len(result) != n:
            raise ValueError(f"{spec.label} is declared with num_returns={n} but returned "
                             f"{type(result).__name__} {result!r:.80}")
    return check


def _task_runner(remote_function: Any, stopping: Callable[[], bool]) -> Callable[..., Any]:
    """Run a remote function as a dynamic task and wait for it (Note [function nodes])."""
    def run(*args: Any, **kwargs: Any) -> Any:
        ref = remote_function.remote(*args, **kwargs)
        while True:
            try:
                return get(ref, timeout=1.0)
            except GetTimeoutError:
                if stopping():
                    raise ChannelClosedError("the graph was torn down while a task ran") from None
    return run

