"""Board power and prices: catalog figures carry a source and a date or are unknown; the
cluster file overrides them per chip and per node group; bad figures name the key and fix."""

from __future__ import annotations

import pytest

from polychip.spec.accelerators import _raw_catalog, lookup
from polychip.spec.cluster import cluster_from_dict, cluster_to_dict
from polychip.spec.economics import MONEY_KEYS
from polychip.spec.errors import SpecError


def _node(chip: str = "h800", **kw: object) -> dict[str, object]:
    return {"chip": chip, "count": 1, "chips_per_node": 8, "nic_gbps": 100, **kw}


def test_every_catalog_chip_states_each_money_figure_with_a_source() -> None:
    for name, entry in _raw_catalog().items():
        for key in MONEY_KEYS:
            fig = entry.get(key)
            assert isinstance(fig, dict) and fig.get("source"), f"{name}.{key} has no source"
            known = fig.get("value") is not None or "low" in fig
            if known:  # a known figure is dated; an unknown one says so
                assert fig.get("date"), f"{name}.{key} has no date"
            else:
                assert fig["source"].startswith(("unknown", "fictional")), f"{name}.{key}"


def test_datasheet_board_power_figures() -> None:
    assert lookup("h800").economics.board_power_w == 700
    assert lookup("a100-80g").economics.board_power_w == 400
    assert lookup("h20").economics.board_power_w is None  # no public datasheet: unknown
    assert lookup("ascend-910b").economics.board_power_w is None
    assert lookup("h100").economics.rent_usd_per_hour is None  # no price is invented


def test_rent_range_midpoint_and_node_override_wins() -> None:
    cluster = cluster_from_dict({
        "nodes": [_node("h800", rent_usd_per_hour=[2.0, 3.0]), _node("h800", board_power_w=650)],
        "chips": {"h800": {"rent_usd_per_hour": 1.0}},
    })  # fmt: skip
    first, second = cluster.groups
    assert first.economics.rent_usd_per_hour == (2.0, 3.0)
    assert first.economics.rent_per_hour == 2.5
    assert first.economics.board_power_w == 700  # the catalog's, not overridden here
    assert second.economics.rent_per_hour == 1.0  # the chip declaration's
    assert second.economics.board_power_w == 650


def test_round_trip_keeps_overrides() -> None:
    cluster = cluster_from_dict({"nodes": [_node("h800", rent_usd_per_hour=[2.0, 3.0])]})
    again = cluster_from_dict(cluster_to_dict(cluster))
    assert again.groups[0].economics == cluster.groups[0].economics
    assert cluster_to_dict(again) == cluster_to_dict(cluster)


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("node", "rent_usd_per_hour", -1),
        ("node", "board_power_w", -5),
        ("chip", "price_usd", -3),
        ("node", "rent_usd_per_hour", [3, 2]),
        ("node", "rent_usd_per_hour", "cheap"),
    ],
)
def test_bad_money_figure_names_the_key_and_the_fix(where: str, key: str, value: object) -> None:
    data: dict = {"nodes": [_node("h800")]}
    if where == "node":
        data["nodes"][0][key] = value
    else:
        data["chips"] = {"h800": {key: value}}
    with pytest.raises(SpecError) as err:
        cluster_from_dict(data, file="c.yaml")
    message = str(err.value)
    assert key in message and ">= 0" in message and "leave it out where unknown" in message
