"""Catalog turnover in the simulated world (`SimConfig.retire_oldest`): pure `World`, no Kafka."""

from __future__ import annotations

from streamrec.harness.simulator import SimConfig, World


def test_a_new_item_retires_the_oldest_which_can_no_longer_be_found_or_clicked():
    world = World(SimConfig(users=5, items=20, seed=1, retire_oldest=True))
    for _ in range(5):
        world.add_item()
        world.retire_oldest()
    listed = [r["item_id"] for r in world.catalog()]
    assert len(listed) == 20 and listed[0] == "sim-i5" and listed[-1] == "sim-i24"
    user = world.users[0]
    assert {world.browse(user) for _ in range(300)} <= set(listed)
    assert world.attraction(user, ["sim-i0", "sim-i4"]).tolist() == [0.0, 0.0]
    assert (world.attraction(user, ["sim-i5", "sim-i24"]) > 0).all()


def test_without_turnover_the_catalog_only_grows():
    world = World(SimConfig(users=5, items=20, seed=3))
    world.add_item()
    assert world.retired == 0 and len(world.catalog()) == 21
    assert (world.attraction(world.users[0], ["sim-i0", "sim-i20"]) > 0).all()
