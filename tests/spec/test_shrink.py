"""A cluster less the chips that died: groups split where their nodes differ, links follow."""

from __future__ import annotations

import pytest

from polychip.spec.cluster import cluster_from_dict
from polychip.spec.errors import SpecError
from polychip.spec.shrink import without_chips


def _cluster() -> object:
    return cluster_from_dict({
        "name": "c", "nodes": [
            {"chip": "a100-80g", "count": 3, "chips_per_node": 4, "nic_gbps": 100},
            {"chip": "ascend-910b", "count": 1, "chips_per_node": 2, "nic_gbps": 50}],
        "links": [{"between": [0, 1], "gbps": 20}, {"between": [0, 0], "gbps": 80}]})


def test_a_node_losing_chips_splits_its_group_and_keeps_node_order() -> None:
    small, nodes = without_chips(_cluster(), {1: 1})
    assert [(g.num_nodes, g.chips_per_node) for g in small.groups] == [(1, 4), (1, 3), (1, 4),
                                                                        (1, 2)]
    assert nodes == {0: 0, 1: 1, 2: 2, 3: 3}
    assert small.num_devices == 13
    # the measured link from the A100 group reaches every part of it
    assert small.link_between(1, 3) is not None and small.link_between(0, 2) is not None
    assert small.link_between(0, 3).bw_bytes_per_s == pytest.approx(20e9 / 8)


def test_a_node_losing_every_chip_disappears() -> None:
    small, nodes = without_chips(_cluster(), {3: 2})
    assert [g.chip.name for g in small.groups] == ["a100-80g"]
    assert nodes == {0: 0, 1: 1, 2: 2} and small.num_devices == 12


def test_losing_more_chips_than_a_node_has_is_refused() -> None:
    with pytest.raises(SpecError, match="node 3 has 2 chips"):
        without_chips(_cluster(), {3: 3})
    with pytest.raises(SpecError, match="no chip left"):
        without_chips(_cluster(), {0: 4, 1: 4, 2: 4, 3: 2})
