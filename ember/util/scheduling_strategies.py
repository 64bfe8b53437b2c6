"""Ray's ``ray.util.scheduling_strategies`` module: where a task or actor runs.

``scheduling_strategy`` takes "DEFAULT", "SPREAD" or a PlacementGroupSchedulingStrategy.
"SPREAD" runs as "DEFAULT" for now: on one node both are the same, and spreading plain tasks
over several nodes is left to the cluster's lease routing.
"""

from __future__ import annotations

from ember.dynamic.api.placement_group import PlacementGroupSchedulingStrategy

__all__ = ["PlacementGroupSchedulingStrategy"]
