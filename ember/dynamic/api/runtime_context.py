"""``ember.get_runtime_context()``: the job, node, worker, task and actor the caller runs in.

Ray's RuntimeContext API. Facts about the process (its worker id, the name and resources of the
actor it hosts, the runtime env it applied) are set once by the worker, the actor's id is the
core worker's; the running call's task id and resources
live in a context variable, so each thread of a threaded actor and each coroutine of an async
actor sees its own call.
"""

from __future__ import annotations

import contextvars
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ember._system import shm
from ember._system.cluster_auth import CLUSTER_ENV
from ember._system.gpu_env import visible_ids
from ember.dynamic.core.process_runtime import runtime
from ember.dynamic.core.object_ref import ID

_call: contextvars.ContextVar[tuple[str, dict] | None] = contextvars.ContextVar(
    "ember_current_call", default=None)


@dataclass
class ProcessFacts:
    """What the current process is: a driver, a task worker, or the host of one actor."""

    worker_id: str = field(default_factory=lambda: os.urandom(14).hex())
    is_worker: bool = False
    actor_name: str = ""
    actor_resources: dict = field(default_factory=dict)
    actor_handle: Callable[[], Any] | None = None
    reconstructed: Callable[[], bool] = lambda: False
    runtime_env: dict = field(default_factory=dict)
    namespace: str | None = None
    node_labels: dict | None = None


_facts = ProcessFacts()


def facts() -> ProcessFacts:
    """This process's facts, for the worker and the driver to fill in."""
    return _facts


def enter_call(task_id: str, resources: dict) -> contextvars.Token:
    """Mark ``task_id`` (holding ``resources``) as the running call of this thread or coroutine."""
    return _call.set((task_id, resources))


def leave_call(token: contextvars.Token) -> None:
    """Undo ``enter_call``."""
    _call.reset(token)


def current_namespace() -> str:
    """The job's namespace (a worker learns it from the job's GCS record once)."""
    if _facts.namespace is None:
        core = _core()
        job = core.endpoint.call(core.gcs_address, "kv_get", "jobs", shm.session_id()) or {}
        _facts.namespace = job.get("namespace") or ""
    return _facts.namespace


def node_labels() -> dict[str, str]:
    """The labels of this node (from its GCS record, once per process)."""
    if _facts.node_labels is None:
        core = _core()
        node = core.endpoint.call(core.gcs_address, "kv_get", "nodes", shm.session_id()) or {}
        _facts.node_labels = dict(node.get("labels") or {})
    return _facts.node_labels


def live_node_labels() -> list[tuple[str, dict[str, str]]]:
    """(node id, labels) of every live node, this one first (one node outside a cluster)."""
    core = _core()
    if not os.environ.get(CLUSTER_ENV):
        return [(shm.session_id(), node_labels())]
    records = core.endpoint.call(core.gcs_address, "kv_items", "nodes")
    here = shm.session_id()
    return sorted(((node_id, dict(record.get("labels") or {})) for node_id, record in records
                   if record.get("alive", True)), key=lambda item: item[0] != here)


def runtime_env_vars(runtime_env: Any) -> dict[str, str]:
    """The env vars of a ``runtime_env`` option; the other keys of Ray's are refused clearly."""
    if runtime_env is None:
        return {}
    if not isinstance(runtime_env, dict):
        raise TypeError(f"runtime_env must be a dict, not {type(runtime_env).__name__}")
    unsupported = set(runtime_env) - {"env_vars"}
    if unsupported:
        raise ValueError(f"runtime_env keys {sorted(unsupported)} are not supported by ember; "
                         f"only 'env_vars' is. Install packages and ship code to the nodes "
                         f"before starting ember.")
    env = runtime_env.get("env_vars") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        raise TypeError(f"runtime_env['env_vars'] must map str to str, not {env!r}")
    return dict(env)


def call_env_vars(own: dict[str, str]) -> dict[str, str]:
    """The env vars of a task or actor made here: those of the runtime env this process runs
    in (a cluster driver's job env, or a worker's: Ray's children inherit it), then its own."""
    inherited = _facts.runtime_env.get("env_vars")
    return {**inherited, **own} if inherited else own


def _core() -> Any:
    core, _ = runtime()
    return core


def get_gpu_ids() -> list[int]:
    """GPU ids given to the current task or actor (empty in the driver)."""
    visible = (visible_ids() or []) if os.environ.get("EMBER_WORKER") else []
    return [int(g) for g in visible if g.isdigit()]

class JobID(ID):
    """A job's id."""


class NodeID(ID):
    """A node's id."""


class ActorID(ID):
    """An actor's id."""


class RuntimeContext:
    """What the current driver, task or actor is; ``ember.get_runtime_context()`` returns one."""

    def get_job_id(self) -> str:
        """The id of the job (driver) this code runs for, in hex."""
        return shm.session_id()

    def get_node_id(self) -> str:
        """The id of the node this process runs on, as ``ember.nodes()`` names it."""
        return shm.session_id()

    def get_worker_id(self) -> str:
        """The id of this worker (or driver) process."""
        return _facts.worker_id

    def get_task_id(self) -> str | None:
        """The id of the running task or actor call; None in the driver."""
        call = _call.get()
        return call[0] if call is not None else None

    def get_actor_id(self) -> str | None:
        """The id of the actor this process hosts; None outside an actor."""
        return _core().actor_id

    def get_actor_name(self) -> str | None:
        """The actor's registered name ('' when unnamed); None outside an actor."""
        return _facts.actor_name if self.get_actor_id() is not None else None

    @property
    def namespace(self) -> str:
        """The namespace of this job (named actors live in it)."""
        return current_namespace()

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor was restarted after its process died (``max_restarts``)."""
        self._require_actor("was_current_actor_reconstructed")
        return _facts.reconstructed()

    @property
    def current_actor(self) -> Any:
        """A handle of the actor this code runs in."""
        self._require_actor("current_actor")
        return _facts.actor_handle()

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources held for the running task ({"CPU": 1.0} by default) or actor ({})."""
        if not _facts.is_worker:
            raise RuntimeError("get_assigned_resources() is only available inside a task or "
                               "an actor, not in the driver")
        call = _call.get()
        if self.get_actor_id() is None and call is not None:
            return dict(call[1])
        return dict(_facts.actor_resources)

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators given to this task or actor: ``{"GPU": ["0", ...]}``."""
        return {"GPU": [str(g) for g in get_gpu_ids()]}

    def get_node_labels(self) -> dict[str, str]:
        """The labels of the node this process runs on."""
        return node_labels()

    def get_runtime_env_string(self) -> str:
        """The runtime env applied in this process, as JSON."""
        return json.dumps(_facts.runtime_env)

    @property
    def runtime_env(self) -> dict:
        """The runtime env applied in this process (``{"env_vars": {...}}`` or ``{}``)."""
        return dict(_facts.runtime_env)

    @property
    def gcs_address(self) -> str:
        """The address of the cluster's GCS."""
        return _core().gcs_address

    @property
    def job_id(self) -> JobID:
        """The job id as an id object (Ray's older API)."""
        return JobID(self.get_job_id())

    @property
    def node_id(self) -> NodeID:
        """The node id as an id object (Ray's older API)."""
        return NodeID(self.get_node_id())

    @property
    def actor_id(self) -> ActorID | None:
        """The actor id as an id object, or None (Ray's older API)."""
        actor_id = self.get_actor_id()
        return ActorID(actor_id) if actor_id is not None else None

    def get(self) -> dict[str, Any]:
        """All of the above as a dict (Ray's older API)."""
        context: dict[str, Any] = {"job_id": self.job_id, "node_id": self.node_id,
                                   "namespace": self.namespace}
        if self.get_task_id() is not None:
            context["task_id"] = self.get_task_id()
        if self.actor_id is not None:
            context["actor_id"] = self.actor_id
        return context

    def _require_actor(self, what: str) -> None:
        if self.get_actor_id() is None:
            raise RuntimeError(f"{what} is only available inside an actor")


def get_runtime_context() -> RuntimeContext:
    """The runtime context of the calling driver, task or actor (starts ember if needed)."""
    _core()
    return RuntimeContext()
