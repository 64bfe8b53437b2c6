"""Whether a compiled graph can still run: torn down, or broken by a death (Note [dead actors]
in compiled_dag.py), and the actor processes the driver watches."""

from __future__ import annotations

import socket
from typing import Any

from ember._system.process import pid_alive
from ember.exceptions import ActorDiedError, ChannelBrokenError, DAGTeardownError

DIED = "The actor died unexpectedly before finishing this task. "   # Ray's words
HOST = socket.gethostname()


class GraphHealth:
    """The graph's state of life, shared by the driver's parts; breaking closes its channels."""

    def __init__(self, channels: dict[int, Any]) -> None:
        self.torn_down = False
        self.broken: BaseException | None = None
        self.actor_procs: dict[str, tuple[str, int]] = {}   # actor id -> (host, pid)
        self._channels = channels

    def check_actors(self) -> None:
        """Raise ActorDiedError (and mark the graph broken) if an actor's process is gone."""
        for actor_id, (host, pid) in self.actor_procs.items():
            if host == HOST and not pid_alive(pid):
                self.mark_broken(ActorDiedError(
                    f"{DIED}actor {actor_id} (pid {pid}) of the compiled graph died; the graph "
                    f"cannot run any more: tear it down and compile a new one over live actors"))
                raise copy_error(self.broken)

    def broken_channel(self, exc: ChannelBrokenError) -> BaseException:
        """The ActorDiedError of a channel whose peer process died; the graph is broken."""
        self.mark_broken(ActorDiedError(DIED + str(exc)))
        return copy_error(self.broken)

    def loop_ended(self) -> BaseException:
        """The ActorDiedError of an output channel closed by a loop that ended (not by us)."""
        self.check_actors()
        self.mark_broken(ActorDiedError(
            DIED + "a loop of the compiled graph ended because a process of the graph died or "
            "failed (see the actors' logs); tear the graph down and compile it again"))
        return copy_error(self.broken)

    def mark_broken(self, exc: BaseException) -> None:
        """Remember the first death and close every channel, which ends every loop."""
        if self.broken is None:
            self.broken = exc
            for channel in self._channels.values():
                try:
                    channel.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass

    def check_usable(self) -> None:
        """Raise DAGTeardownError or the death that broke the graph, if either happened."""
        if self.torn_down:
            raise DAGTeardownError("Channel closed: this compiled graph was torn down; compile "
                                   "the graph again to run it")
        if self.broken is not None:
            raise copy_error(self.broken)

    def check_pending(self, seq: int) -> None:
        """Raise why execution ``seq``, not finished, never will."""
        if self.broken is not None:
            raise copy_error(self.broken)
        if self.torn_down:
            raise DAGTeardownError(f"Channel closed: the compiled graph was torn down before "
                                   f"execution {seq} finished; compile the graph again to run it")


def copy_error(exc: BaseException) -> BaseException:
    """A fresh instance of a stored error, so each raise has its own traceback."""
    try:
        return type(exc)(*exc.args)
    except Exception:  # noqa: BLE001
        return exc
