"""The Global Control Store: cluster metadata in one process, with pub/sub of changes.

Tables (in a ``gcs_storage`` backend): ``nodes`` (node_table.py, in a cluster), ``actors``
(actor id -> info dict), ``named_actors`` ("namespace/name" -> actor id), ``functions`` (id ->
pickled code), ``jobs``, ``kv`` (user key-value), and the placement group tables
(gcs/placement_groups.py). Subscribers of a channel receive ``("pub", channel, key, value)``; in-process
``watchers`` are called with it.
In-memory tables are replicated to the driver of a local cluster, which restarts a dead GCS
(Note [GCS restart]); a cluster head does not restart its GCS: its node stops (node.py).
Run as ``python -m ember.dynamic.gcs.server <address> <driver_address> <storage_url> [<snapshot>]``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

from ember._system.cluster_auth import CLUSTER_ENV
from ember.dynamic.gcs.storage import open_storage, read_snapshot
from ember.dynamic.rpc.messaging import Endpoint
from ember.dynamic.gcs.node_table import NodeTable
from ember.dynamic.gcs.placement_groups import PlacementGroupManager
from ember._system.process import bind_to_parent, wait_until_done


class GcsServer:
    """The GCS's handlers over its storage backend."""

    def __init__(self, address: str, storage_url: str | None, replica_address: str,
                 tables: dict | None = None) -> None:
        self.storage = open_storage(storage_url, tables)
        self.endpoint = Endpoint(address, "gcs")
        if not self.storage.durable and not os.environ.get(CLUSTER_ENV):   # Note [GCS restart]
            self.storage.on_change = lambda *change: self.endpoint.send(
                replica_address, "gcs_replica", *change)
        self.subscribers: dict[str, set[str]] = {}
        for key, _ in self.storage.items("subscribers"):
            channel, address = key.split("|", 1)
            self.subscribers.setdefault(channel, set()).add(address)
        self.done = threading.Event()
        self.watchers: dict[str, list[Callable[[str, Any], None]]] = {}  # in-process subscribers
        self.placement = PlacementGroupManager(self.storage, self.endpoint, self.publish,
                                               self.watchers)
        ep = self.endpoint
        ep.on("kv_put", self.kv_put)
        ep.on("kv_get", self.kv_get)
        ep.on("kv_del", self.kv_del)
        ep.on("kv_items", self.kv_items)
        ep.on("register_actor", self.register_actor)
        ep.on("update_actor", self.update_actor)
        ep.on("get_named_actor", self.get_named_actor)
        ep.on("subscribe", self.subscribe)
        ep.on("node_died", self.node_died)
        ep.on("shutdown", lambda: self.done.set())
        self.nodes = NodeTable(self) if os.environ.get(CLUSTER_ENV) else None

    def kv_put(self, reply_to: str, rid: int, table: str, key: str, value: Any,
               overwrite: bool) -> None:
        """Store a value; answer whether it was written."""
        if not overwrite and self.storage.get(table, key) is not None:
            self.endpoint.reply(reply_to, rid, False)
            return
        self.storage.put(table, key, value)
        self.endpoint.reply(reply_to, rid, True)
        self.publish(table, key, value)

    def kv_get(self, reply_to: str, rid: int, table: str, key: str) -> None:
        """Answer with the value under ``key`` or None."""
        self.endpoint.reply(reply_to, rid, self.storage.get(table, key))

    def kv_del(self, reply_to: str, rid: int, table: str, key: str) -> None:
        """Remove a key; answer whether it existed."""
        self.endpoint.reply(reply_to, rid, self.storage.delete(table, key))

    def kv_items(self, reply_to: str, rid: int, table: str) -> None:
        """Answer with every (key, value) of a table."""
        self.endpoint.reply(reply_to, rid, self.storage.items(table))

    def register_actor(self, reply_to: str, rid: int, actor_id: str, info: dict,
                       get_if_exists: bool) -> None:
        """Record an actor; for a named one answer the id of a live actor holding the name."""
        name = info.get("name")
        if name:
            key = f"{info.get('namespace') or ''}/{name}"
            existing = self.storage.get("named_actors", key)
            if existing is not None and existing != actor_id:  # a resent request: idempotent
                state = (self.storage.get("actors", existing) or {}).get("state")
                if state != "DEAD":
                    self.endpoint.reply(reply_to, rid, self.storage.get("actors", existing))
                    return
            self.storage.put("named_actors", key, actor_id)
        self.storage.put("actors", actor_id, info)
        self.endpoint.reply(reply_to, rid, None)

    def update_actor(self, actor_id: str, fields: dict) -> None:
        """Merge ``fields`` into an actor's info; a DEAD actor gives up its name."""
        info = dict(self.storage.get("actors", actor_id) or {})
        info.update(fields)
        self.storage.put("actors", actor_id, info)
        if fields.get("state") == "DEAD" and info.get("name"):
            key = f"{info.get('namespace') or ''}/{info['name']}"
            if self.storage.get("named_actors", key) == actor_id:
                self.storage.delete("named_actors", key)
        self.publish("actors", actor_id, info)

    def get_named_actor(self, reply_to: str, rid: int, name: str, namespace: str | None) -> None:
        """Answer with the info of the live actor named ``name``, or None."""
        actor_id = self.storage.get("named_actors", f"{namespace or ''}/{name}")
        info = self.storage.get("actors", actor_id) if actor_id else None
        self.endpoint.reply(reply_to, rid, info)

    def node_died(self, keep: list[str]) -> None:
        """The node manager died and its actors with it, but for ``keep`` (restarting ones)."""
        for actor_id, info in self.storage.items("actors"):
            if info.get("state") != "DEAD" and actor_id not in keep:
                self.update_actor(actor_id, {"state": "DEAD"})

    def subscribe(self, channel: str, address: str) -> None:
        """Send changes of ``channel`` (a table name) to ``address`` from now on."""
        self.subscribers.setdefault(channel, set()).add(address)
        self.storage.put("subscribers", f"{channel}|{address}", True)

    def publish(self, channel: str, key: str, value: Any) -> None:
        """Tell every subscriber of ``channel`` about a change."""
        self.tell_watchers(channel, key, value)
        for address in self.subscribers.get(channel, ()):
            self.endpoint.send(address, "pub", channel, key, value)


    def tell_watchers(self, channel: str, key: str, value: Any) -> None:
        """Tell only the in-process watchers of ``channel`` (a change too frequent to publish:
        a node's load, Note [node heartbeats])."""
        for watcher in self.watchers.get(channel, ()):
            watcher(key, value)


def main() -> None:
    """Entry point of the GCS process."""
    bind_to_parent()
    address, ready_address, storage_url = sys.argv[1:4]
    server = GcsServer(address, None if storage_url == "memory" else storage_url,
                       ready_address, read_snapshot(sys.argv[4]) if len(sys.argv) > 4 else None)
    server.endpoint.start()
    server.endpoint.send(ready_address, "process_ready", "gcs", server.endpoint.address)
    wait_until_done(server.done)
    server.endpoint.stop()
    server.storage.close()


if __name__ == "__main__":
    main()
