"""The GCS's table of nodes: registration, heartbeats, death by silence, and picking a node.

Note [node heartbeats]: a node manager of a cluster registers its node with the GCS
(``register_node``: address, resources, labels, transfer address) and then sends a heartbeat
every ``HEARTBEAT_S`` with its available resources and the addresses of its processes (workers
and local drivers). A node whose heartbeats stop for ``node_timeout_s()``
(``EMBER_NODE_TIMEOUT_S``, default 10 s; a GCS that did not run for a while itself, on a loaded
machine, does not count its own pause) is marked dead: its record says ``"alive": False``, the
change is published on the ``"nodes"`` channel, and its actors are marked DEAD. Every node
manager subscribes to that channel and tells its local processes that each process of the dead
node is gone (Note [node death] in node_manager/server.py). A node that comes back after being declared
dead is not taken back: it must restart (its processes were already given up for dead). The GCS
answers each heartbeat; a node manager whose heartbeats go unanswered for as long (the head is
gone), or are answered "dead", exits with an error, and its node daemon with it: a container or
``srun`` step sees the failure and can start the node again.

Note [spillback]: a node manager places a lease request locally when it can. When its node can
never hold the request, or holds no free resources for it now, it asks ``pick_node`` for another
node: one alive, other than the asking one, whose total resources fit and (for a busy node)
whose last reported available resources fit now, most free CPU first; it then forwards the
request there (the answer goes straight to the caller). The GCS takes the request off that
node's available resources at once, so the next requests of a burst go to other nodes rather
than all to the one that looked free at its last heartbeat. A forwarded request is queued where
it lands, never forwarded again.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from ember.dynamic.common.resources import EPS

HEARTBEAT_S = 1.0
TIMEOUT_ENV = "EMBER_NODE_TIMEOUT_S"


def node_timeout_s() -> float:
    """Seconds of silence after which a node is dead (Note [node heartbeats])."""
    return float(os.environ.get(TIMEOUT_ENV, "10"))


def fits(request: dict[str, float], resources: dict[str, float]) -> bool:
    """Whether ``resources`` hold ``request``."""
    return all(resources.get(k, 0.0) + EPS >= v for k, v in request.items() if v > 0)


class NodeTable:
    """Node records in the GCS's storage, with the time of each node's last heartbeat."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.storage = server.storage
        self.last_seen: dict[str, float] = {}
        self.timeout = node_timeout_s()
        ep = server.endpoint
        ep.on("register_node", self.register)
        ep.on("node_heartbeat", self.heartbeat)
        ep.on("pick_node", self.pick)
        ep.on("node_stopped", lambda node_id: self.mark_dead(node_id, "it was stopped"))
        ep.on("client_gone", self.client_gone)
        ep.on("owner_gone", lambda address: self._tell_nodes("owner_gone", address))
        now = time.monotonic()
        for node_id, record in self.storage.items("nodes"):
            if record.get("alive", True):
                self.last_seen[node_id] = now   # a restarted GCS gives every node a full timeout
        self.last_check = now
        ep.call_later(HEARTBEAT_S, self.check)

    def register(self, reply_to: str, rid: int, node_id: str, record: dict) -> None:
        """A node manager joins the cluster."""
        record = {**record, "alive": True, "available": dict(record["resources"])}
        self.last_seen[node_id] = time.monotonic()
        self.storage.put("nodes", node_id, record)
        self.server.endpoint.reply(reply_to, rid, True)
        self.server.publish("nodes", node_id, record)

    def heartbeat(self, reply_to: str, rid: int, node_id: str, total: dict, available: dict,
                  processes: list) -> None:
        """A node is alive; remember what it has free and which processes run there. Answer
        whether the node still belongs to the cluster."""
        record = self.storage.get("nodes", node_id)
        alive = record is not None and record.get("alive", True)
        self.server.endpoint.reply(reply_to, rid, alive)
        if not alive:
            return   # declared dead: Note [node heartbeats]
        self.last_seen[node_id] = time.monotonic()
        if (record.get("available") != available or record.get("resources") != total
                or record.get("processes") != processes):
            record = {**record, "resources": total, "available": available,
                      "processes": processes}
            self.storage.put("nodes", node_id, record)
            self.server.tell_watchers("nodes", node_id, record)   # waiting placement groups

    def pick(self, reply_to: str, rid: int, resources: dict, exclude: str, now: bool) -> None:
        """Answer with the node manager address of another node for a request, or None
        (Note [spillback])."""
        best, best_cpu = None, -math.inf   # counted loads may go below zero
        for node_id, record in self.storage.items("nodes"):
            if node_id == exclude or not record.get("alive", True):
                continue
            if not fits(resources, record["resources"]):
                continue
            available = record.get("available", record["resources"])
            if now and not fits(resources, available):
                continue
            cpu = available.get("CPU", 0.0)
            if cpu > best_cpu:
                best, best_cpu = (node_id, record), cpu
        self.server.endpoint.reply(reply_to, rid, best and best[1]["address"])
        if best is not None:   # until its next heartbeat, count what was just sent there
            node_id, record = best
            available = dict(record.get("available", record["resources"]))
            for k, v in resources.items():
                available[k] = available.get(k, 0.0) - v
            self.storage.put("nodes", node_id, {**record, "available": available})

    def client_gone(self, address: str) -> None:
        """A driver ended: every node ends the actors and leases it held there, its actors but
        the detached ones are DEAD (their names free again), its compiled graphs are gone."""
        for actor_id, info in self.storage.items("actors"):
            if (info.get("owner") == address and not info.get("detached")
                    and info.get("state") != "DEAD"):
                self.server.update_actor(actor_id, {"state": "DEAD"})
        for graph_id, info in self.storage.items("compiled_graphs"):
            if info.get("driver") == address:
                self.storage.delete("compiled_graphs", graph_id)
        self._tell_nodes("client_gone", address)

    def _tell_nodes(self, kind: str, *args: object) -> None:
        """Send a message to every live node manager (a process that ended: Note [owner ends]
        in objects/store.py)."""
        for _, record in self.storage.items("nodes"):
            if record.get("alive", True):
                self.server.endpoint.send(record["address"], kind, *args)

    def check(self) -> None:
        """Mark nodes that have been silent too long dead; run again in a while."""
        now = time.monotonic()
        if now - self.last_check > 2 * HEARTBEAT_S:   # this GCS itself did not run: its
            for node_id in self.last_seen:            # silence is not the nodes'
                self.last_seen[node_id] += now - self.last_check - HEARTBEAT_S
        self.last_check = now
        for node_id, seen in list(self.last_seen.items()):
            if now - seen > self.timeout:
                del self.last_seen[node_id]
                self.mark_dead(node_id, f"its heartbeats stopped for {self.timeout:g} s")
        self.server.endpoint.call_later(HEARTBEAT_S, self.check)

    def mark_dead(self, node_id: str, why: str) -> None:
        """Declare a node dead and publish it; its actors die with it."""
        record = self.storage.get("nodes", node_id)
        if record is None or not record.get("alive", True):
            return
        self.last_seen.pop(node_id, None)
        record = {**record, "alive": False, "death_reason": why}
        self.storage.put("nodes", node_id, record)
        gone = set(record.get("processes", ()))
        for actor_id, info in self.storage.items("actors"):
            if info.get("state") != "DEAD" and info.get("address") in gone:
                self.server.update_actor(actor_id, {"state": "DEAD"})
        self.server.publish("nodes", node_id, record)
