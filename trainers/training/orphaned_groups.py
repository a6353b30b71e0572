"""Placement groups left by Ray Train runs whose controller died, found and removed from the GCS.

A placement group lives as long as its creator's JOB, not its creator actor. When the coordinator (and with it
the TrainController it owns) is killed mid-training, the group keeps its CPUs until the driver exits, and the
restarted coordinator's training waits for them forever. Ray Train's own answer, the PlacementGroupCleaner
actor, asks the State API whether the controller lives; that API is served by the dashboard, which dpost's
clusters run without, so the cleaner only logs "Failed to query Ray Train Controller actor state" every
second and never cleans. dpost therefore does the cleaner's job itself, before each training starts, from the
GCS (which knows each group's creator and whether it died), and leaves the cleaner out (`Trainer`).

This is the one module that reads Ray internals (the GCS placement-group table and its protobuf, and
DataParallelTrainer's default callbacks); tests/test_orphaned_groups.py fails if a Ray upgrade moves them.
"""

from __future__ import annotations

from typing import Any

import ray
from ray._private.state import state  # GCS tables; unlike ray.util.state, needs no dashboard
from ray.core.generated import gcs_pb2
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.util import remove_placement_group
from ray.util.placement_group import PlacementGroup

CONTROLLER_CLASS = "TrainController"  # the actor class that creates a Ray Train run's worker group


def remove_orphaned_training_groups() -> list[str]:
    """Remove the placement groups of Ray Train runs whose controller is dead; returns their ids (hex)."""
    if not ray.is_initialized():
        return []
    removed = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if group.state == gcs_pb2.PlacementGroupTableData.REMOVED or group.is_detached \
                or not group.creator_actor_dead:
            continue
        creator = state.actor_table(group.creator_actor_id.hex())
        if creator.get("ActorClassName") != CONTROLLER_CLASS:
            continue
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
        removed.append(group.placement_group_id.hex())
    if removed:
        print(f"[dpost] removed {len(removed)} placement group(s) left by killed training runs", flush=True)
    return removed


class Trainer(TorchTrainer):
    """Ray Train's TorchTrainer without the PlacementGroupCleaner (see the module's docstring): call
    `remove_orphaned_training_groups()` before `fit()` instead."""

    def _create_default_callbacks(self) -> list[Any]:
        return [c for c in super()._create_default_callbacks() if not isinstance(c, PlacementGroupCleanerCallback)]
