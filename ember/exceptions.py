"""The one exception hierarchy of ember: every error a user can catch lives here.

Note [timeouts]
~~~~~~~~~~~~~~~
Every call of ember that can block takes ``timeout``: seconds as a float; ``None`` waits
without limit (in a compiled graph: for the compile option that stands in, ``get_timeout`` or
``submit_timeout``, None by default); ``0`` tries once without waiting. A call that runs out of
time raises a ``TimeoutError``, and changes nothing, so it can be retried: ``GetTimeoutError``
for a result (``ember.get`` of an ObjectRef, and of a compiled ref as ``ResultTimeoutError``),
``ChannelTimeoutError`` for a channel's read or write and for an ``execute`` that found no room
(Note [channel timeouts] in ember/channels/interface.py). ``ember.wait`` does not raise: at its
timeout it returns what is ready. A dead peer is never waited for: it is its own error
(``ActorDiedError``, ``ChannelBrokenError``, ``ObjectLostError``) within a bounded time.
"""

from __future__ import annotations


class EmberError(Exception):
    """Base class of every error ember raises on purpose."""


class RuntimeNotInitializedError(EmberError):
    """The runtime is not running (``ember.init`` was not called or ``shutdown`` ran)."""


class ReinitError(EmberError, RuntimeError):
    """``ember.init`` was called while the runtime is already running."""


class SerializationError(EmberError, TypeError):
    """A value could not be pickled or unpickled; the message names the object."""


class TaskError(EmberError):
    """An exception raised inside a remote task or actor method.

    ``TaskError.wrap`` builds an instance that is also an instance of the original exception class,
    so ``except ValueError`` keeps working across process boundaries.
    """

    def __init__(self, message: str, cause: BaseException | None = None,
                 remote_traceback: str = "") -> None:
        # Not super(): in a dual class it would reach the original class's __init__, whose
        # signature is unknown. Its attributes are copied by ``wrap`` instead.
        Exception.__init__(self, message)
        self.cause = cause
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    def __reduce__(self):
        return (_rebuild_task_error, (self.args[0], self.cause, self.remote_traceback))

    @staticmethod
    def wrap(cause: BaseException, where: str, remote_traceback: str) -> "TaskError":
        """Return a TaskError that is also an instance of the original error's class (for a
        TaskError raised by a nested task: of the class of the error that task raised)."""
        message = (f"{type(cause).__name__}: {cause}\n\n"
                   f"raised in {where}; remote traceback:\n{remote_traceback}")
        root = cause
        while isinstance(root, TaskError) and root.cause is not None:
            root = root.cause
        cls = type(root)
        if isinstance(root, TaskError) or cls in (Exception, BaseException):
            return TaskError(message, cause, remote_traceback)
        try:
            dual = _dual_class(cls)
            err = dual.__new__(dual)
            TaskError.__init__(err, message, cause, remote_traceback)
            err.__dict__.update(getattr(root, "__dict__", {}))
            return err
        except TypeError:
            return TaskError(message, cause, remote_traceback)


_DUAL_CLASSES: dict[type, type] = {}


def _dual_class(cls: type) -> type:
    dual = _DUAL_CLASSES.get(cls)
    if dual is None:
        dual = type(f"TaskError({cls.__name__})", (TaskError, cls),
                    {"__module__": __name__, "__str__": TaskError.__str__,
                     "__reduce__": TaskError.__reduce__})
        _DUAL_CLASSES[cls] = dual
    return dual


def _rebuild_task_error(message: str, cause: BaseException | None, tb: str) -> TaskError:
    if cause is None:
        return TaskError(message, None, tb)
    err = TaskError.wrap(cause, "", tb)
    err.args = (message,)
    return err


class WorkerCrashedError(EmberError):
    """The worker process running a task died, and the task ran out of retries."""


class ActorError(EmberError):
    """Base class of errors about an actor."""


class ActorDiedError(ActorError):
    """The actor's process is dead (killed, crashed, or its creation failed)."""


class NodeDiedError(EmberError):
    """The node manager running a call died; the call did not finish (Note [node manager death])."""


class ActorNodeDiedError(NodeDiedError, ActorDiedError):
    """An actor died with its node manager: both a NodeDiedError and an ActorDiedError."""


class ActorNotFoundError(ActorError, ValueError):
    """No live actor has the requested name."""


class GetTimeoutError(EmberError, TimeoutError):
    """``get`` or ``wait`` ran past its timeout."""


class ObjectLostError(EmberError):
    """An object's value is gone and cannot be rebuilt."""


class ObjectFreedError(ObjectLostError):
    """An object was read after it had been freed."""


class OwnerDiedError(ObjectLostError):
    """The process that owned an object died before the object had a value (Note [ownership])."""


class TaskCancelledError(EmberError):
    """The task was cancelled with ``ember.cancel`` before it finished."""


class AuthenticationError(EmberError):
    """A peer failed the session's or cluster's authentication check; its message was dropped."""


class ActorClassInheritanceException(EmberError, TypeError):
    """A class tried to inherit from an actor class (``@ember.remote`` class); inherit its original."""


class SchedulingError(EmberError):
    """A task or actor asks for resources that no node in the cluster has."""


class OutOfMemoryError(EmberError, MemoryError):
    """The object store is full and nothing can be spilled."""


class ChannelError(EmberError):
    """Base class of errors raised by a channel of a compiled graph."""


class ChannelClosedError(ChannelError):
    """The channel was closed (the graph was torn down)."""


class ChannelBrokenError(ChannelError):
    """The process at the other end of a channel died, or its node or connection did (the cause,
    if any, in ``__cause__``); unlike ChannelClosedError nobody closed it. A compiled graph
    turns it into ActorDiedError (Note [dead actors] in ember/engine/compiled_dag.py)."""


class ChannelTimeoutError(ChannelError, TimeoutError):
    """A channel read or write ran past its timeout."""


class ResultTimeoutError(ChannelTimeoutError, GetTimeoutError):
    """A compiled graph's result did not come within a ``get``'s timeout: a GetTimeoutError as
    for an ObjectRef, and a ChannelTimeoutError (Ray's ``RayChannelTimeoutError``)."""


class ChannelValueTooLargeError(ChannelError, ValueError):
    """A value does not fit in a channel that may not grow."""


class CompileError(EmberError, ValueError):
    """A graph cannot be compiled; the message names the offending node."""


class DAGTeardownError(ChannelError, RuntimeError):
    """A compiled graph was used after ``teardown()``; a ChannelError too, since its channels
    are closed (a Ray port catches it as ``RayChannelError``)."""


class CapacityExceededError(EmberError):
    """A compiled graph holds more results than ``max_buffered_results`` allows (only raised
    when that limit was asked for; ember waits instead by default)."""


class InvalidArgumentsError(EmberError, TypeError, ValueError):
    """A graph was built or executed with arguments of the wrong kind or number (a TypeError
    for Python's convention, a ValueError for Ray's)."""


class TensorTransportError(EmberError):
    """A tensor could not travel through its GPU transport (shape, dtype or device mismatch)."""


class UnsafeSessionDirError(EmberError, PermissionError):
    """The folder for session files could be changed by another user, so ember will not use it."""


# -- Ray's names, so that ``import ember as ray`` code catching ``ray.exceptions.X`` works ---------

RayError = EmberError
RayTaskError = TaskError
RayActorError = ActorError
RayChannelError = ChannelError
RayChannelTimeoutError = ChannelTimeoutError
RayCgraphCapacityExceeded = CapacityExceededError
