"""Ray's ``ray.util.placement_group`` module (the code is in ember/dynamic/api/placement_group.py)."""

from __future__ import annotations

from ember.dynamic.api.placement_group import (PlacementGroup, get_current_placement_group,
                                           get_placement_group, placement_group,
                                           placement_group_table, remove_placement_group)

__all__ = ["PlacementGroup", "get_current_placement_group", "get_placement_group",
           "placement_group", "placement_group_table", "remove_placement_group"]
