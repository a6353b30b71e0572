"""trainers/training/orphaned_groups.py reads Ray internals: these tests fail when a Ray upgrade changes them,
instead of a killed coordinator's next training silently waiting forever for CPUs."""

from __future__ import annotations

import pytest
import ray.train

from trainers.training.orphaned_groups import Trainer


def _default_callbacks(trainer_class: type) -> list[str]:
    trainer = trainer_class(lambda config: None, scaling_config=ray.train.ScalingConfig(num_workers=1))
    return [type(c).__name__ for c in trainer._create_default_callbacks()]


def test_ray_trains_default_callbacks_include_the_cleaner_dpost_replaces():
    from ray.train.torch import TorchTrainer

    assert "PlacementGroupCleanerCallback" in _default_callbacks(TorchTrainer)


def test_dpost_trainer_keeps_every_default_callback_but_the_placement_group_cleaner():
    from ray.train.torch import TorchTrainer

    ours = _default_callbacks(Trainer)
    assert "PlacementGroupCleanerCallback" not in ours
    assert ours == [c for c in _default_callbacks(TorchTrainer) if c != "PlacementGroupCleanerCallback"]


def test_gcs_placement_group_record_has_the_fields_orphan_detection_reads():
    from ray.core.generated import gcs_pb2

    fields = set(gcs_pb2.PlacementGroupTableData.DESCRIPTOR.fields_by_name)
    assert {"placement_group_id", "state", "is_detached", "creator_actor_id", "creator_actor_dead"} <= fields
    assert gcs_pb2.PlacementGroupTableData.REMOVED


@pytest.mark.ray
def test_group_of_a_dead_train_controller_is_removed_and_others_are_kept(ray_cluster):
    """A stand-in actor with Ray Train's controller class name creates a group and dies; an actor of another
    class does the same. Only the controller's group is removed."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table

    from trainers.training.orphaned_groups import CONTROLLER_CLASS, remove_orphaned_training_groups

    class Creator:
        def reserve(self) -> str:
            # a byte of memory, no CPU: a leftover group must not starve the session's later training
            group = ray.util.placement_group([{"memory": 1}])
            ray.get(group.ready(), timeout=60)
            return group.id.hex()

    controller = ray.remote(num_cpus=0)(type(CONTROLLER_CLASS, (Creator,), {})).remote()
    other = ray.remote(num_cpus=0)(type("SomeOtherActor", (Creator,), {})).remote()
    orphan, kept = ray.get(controller.reserve.remote()), ray.get(other.reserve.remote())
    try:
        for actor in (controller, other):
            ray.kill(actor)
            with pytest.raises(ray.exceptions.RayActorError):  # dead for the GCS too, not only killed
                ray.get(actor.reserve.remote(), timeout=60)

        removed = remove_orphaned_training_groups()

        assert orphan in removed and kept not in removed
        states = {pg_id: info["state"] for pg_id, info in placement_group_table().items()}
        assert states[orphan] == "REMOVED"
        assert states[kept] != "REMOVED"
    finally:
        for pg_id in (orphan, kept):
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
