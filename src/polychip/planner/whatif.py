"""`what_if`: which addition to a cluster buys the most tokens/s per unit of money.

Each `--add CHIP:COUNT` is planned as the cluster plus a new node group of that chip (nodes
of the chip's size in this cluster, else 8 chips with the cluster's fastest NIC), with the
same planner, model and job; options rank by tokens/s gained per US$ (rent per hour, or
list price with `pay="buy"`). Prices come from the catalog or the cluster file's `chips:`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from polychip.plan.plan import Plan
from polychip.planner.api import plan_job
from polychip.spec.accelerators import normalise, resolve_name, unknown_chip_error
from polychip.spec.cluster import Cluster, cluster_from_dict
from polychip.spec.errors import PolychipError
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

DEFAULT_CHIPS_PER_NODE = 8
PAY = {"rent": ("rent_per_hour", "rent_usd_per_hour", "US$/h"), "buy": ("price_usd", "price_usd",
                                                                        "US$")}


@dataclass(frozen=True)
class Option:
    add: str  # "CHIP:COUNT" as given
    tokens_per_s: float
    gain_tokens_per_s: float
    added_cost: float  # US$/h of rent, or US$ of list price (pay="buy")
    gain_per_cost: float | None  # None: the addition costs nothing
    plan: Plan

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "add", "tokens_per_s", "gain_tokens_per_s", "added_cost", "gain_per_cost")}


def parse_add(text: str) -> tuple[str, int]:
    chip, sep, count = text.rpartition(":")
    if not sep or not chip or not count.isdigit() or int(count) < 1:
        raise PolychipError(
            f"--add {text!r}: write CHIP:COUNT with COUNT a whole number >= 1, e.g. --add h20:64"
        )
    return chip, int(count)


def added_cluster(data: dict[str, Any], chip: str, count: int, file: str | None) -> Cluster:
    """The cluster file's mapping with a node group of `count` chips `chip` appended."""
    declared = {resolve_name(k) or normalise(k) for k in data.get("chips", {})}
    ident = resolve_name(chip) or normalise(chip)
    if ident not in declared and resolve_name(chip) is None:
        raise unknown_chip_error(chip, key="--add")
    base = cluster_from_dict(data, file)
    same = [
        g for g in base.groups if (resolve_name(g.chip.name) or normalise(g.chip.name)) == ident
    ]
    per_node = same[0].chips_per_node if same else DEFAULT_CHIPS_PER_NODE
    nic = (same[0] if same else max(base.groups, key=lambda g: g.nic_bw_bytes_per_s))
    per_node = min(per_node, count)
    if count % per_node:
        raise PolychipError(
            f"--add {chip}:{count}: {chip} comes in nodes of {per_node} chips here; give a "
            f"multiple of {per_node}"
        )
    out = copy.deepcopy(data)
    out["nodes"] = [*out["nodes"], {
        "chip": chip, "count": count // per_node, "chips_per_node": per_node,
        "nic_gbps": nic.nic_bw_bytes_per_s * 8 / 1e9, "label": f"added-{chip}",
    }]  # fmt: skip
    return cluster_from_dict(out, file)


def addition_cost(cluster: Cluster, add: str, count: int, pay: str) -> float:
    """What `count` chips of the cluster's last (added) node group cost, or an error naming
    the chip and the key to set."""
    attr, key, unit = PAY[pay]
    group = cluster.groups[-1]
    value = getattr(group.economics, attr)
    if value is None:
        raise PolychipError(
            f"--add {add}: chip {group.chip.name!r} has no {key} (catalog: unknown); declare "
            f"it in the cluster file, e.g. chips: {{{group.chip.name}: {{{key}: ...}}}} ({unit} "
            f"per chip, >= 0)"
        )
    return count * value


def what_if(
    data: dict[str, Any],
    model: ModelSpec,
    job: TrainingJob,
    adds: Sequence[str],
    *,
    budget: float | None = None,
    pay: str = "rent",
    file: str | None = None,
    planner: Callable[..., Plan] = plan_job,
) -> tuple[Plan, list[Option]]:
    """The cluster's own plan and each addition's option within `budget`, best gain per cost
    first. Raises PolychipError for an unknown chip, a missing price or a budget that covers
    no addition."""
    if budget is not None and budget < 0:
        raise PolychipError(f"--budget {budget} must be >= 0 (US$/h with rent, US$ with buy)")
    parsed = [(a, *parse_add(a)) for a in adds]
    clusters = [(a, n, added_cluster(data, chip, n, file)) for a, chip, n in parsed]
    costs = [addition_cost(c, a, n, pay) for a, n, c in clusters]
    if budget is not None and all(cost > budget for cost in costs):
        raise PolychipError(
            f"--budget {budget:g} covers no addition: the cheapest, --add "
            f"{clusters[costs.index(min(costs))][0]}, costs {min(costs):,.2f}; raise --budget "
            "or add fewer chips"
        )
    base = planner(cluster_from_dict(data, file), model, job)
    assert base.estimate is not None
    options = []
    for (add, _, cluster), cost in zip(clusters, costs, strict=True):
        if budget is not None and cost > budget:
            continue
        plan = planner(cluster, model, job)
        assert plan.estimate is not None
        gain = plan.estimate.tokens_per_s - base.estimate.tokens_per_s
        options.append(Option(add, plan.estimate.tokens_per_s, gain, cost,
                              gain / cost if cost > 0 else None, plan))
    options.sort(key=lambda o: (o.gain_per_cost is not None,
                                -(o.gain_per_cost or 0.0), -o.gain_tokens_per_s))
    return base, options
