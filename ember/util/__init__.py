"""Helpers of Ray's ``ray.util`` namespace that programs ported with ``import ember as ray`` use."""

from __future__ import annotations

from ember.dynamic.api import driver
from ember.dynamic.api.runtime_context import current_namespace
from ember.util import scheduling_strategies
from ember.util.actor_pool import ActorPool
from ember.util.placement_group import (PlacementGroup, get_current_placement_group,
                                        get_placement_group, placement_group,
                                        placement_group_table, remove_placement_group)

__all__ = ["ActorPool", "PlacementGroup", "get_current_placement_group", "get_node_ip_address",
           "get_placement_group", "list_named_actors", "placement_group",
           "placement_group_table", "remove_placement_group", "scheduling_strategies"]


def get_node_ip_address() -> str:
    """The IP address this node is reached at (its ``--node-ip-address`` in a cluster)."""
    return driver.node_ip_address()


def list_named_actors(all_namespaces: bool = False) -> list:
    """Names of the live named actors: of this job's namespace, or (``all_namespaces``) of
    every namespace as ``{"name": ..., "namespace": ...}`` dicts, as Ray returns them."""
    core, _ = driver.runtime()
    entries = [key.split("/", 1) for key, _ in
               core.endpoint.call(core.gcs_address, "kv_items", "named_actors")]
    if all_namespaces:
        return [{"name": name, "namespace": namespace} for namespace, name in entries]
    here = current_namespace()
    return [name for namespace, name in entries if namespace == here]
