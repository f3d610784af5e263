"""What the planner optimises: `throughput` (tokens/s, the default) or `cost` (US$ per
million tokens over the chips a plan uses, at their rent; docs/planner.md)."""

from __future__ import annotations

from collections.abc import Iterable

from polychip.costmodel.economics import cost_per_mtok, unpriced_groups
from polychip.planner.scoring import Scored
from polychip.spec.cluster import Cluster
from polychip.spec.errors import PolychipError

OBJECTIVES = ("throughput", "cost")


def check_objective(objective: str, cluster: Cluster, simulate_top: int) -> None:
    """A bad objective, or `cost` with a chip whose rent is unknown: one error naming the
    chip, the key to set and where."""
    if objective not in OBJECTIVES:
        raise PolychipError(f"objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    if objective != "cost":
        return
    if simulate_top:
        raise PolychipError(
            "--objective cost chooses by price, --simulate by simulated tokens/s: use one"
        )
    missing = unpriced_groups(cluster)
    if missing:
        g = missing[0]
        raise PolychipError(
            f"--objective cost needs a rent for every chip, and chip {g.chip.name!r} (node "
            f"group {g.label!r}) has none: set rent_usd_per_hour (US$ per chip-hour, >= 0, "
            f"a number or [low, high]) under nodes[{g.index}] or under "
            f"`chips: {{{g.chip.name}: ...}}` in the cluster file"
        )


def cheapest(cluster: Cluster, candidates: Iterable[Scored]) -> Scored | None:
    """The candidate with the least cost per million tokens (ties: more tokens/s)."""
    best, best_key = None, None
    for c in candidates:
        cost = cost_per_mtok(cluster, c.replicas, c.tokens_per_s)
        if cost is None:
            continue
        key = (cost, -c.tokens_per_s, c.num_replicas)
        if best_key is None or key < best_key:
            best, best_key = c, key
    return best


def cost_note(cluster: Cluster, chosen: Scored, fastest: Scored) -> str:
    """What choosing by cost gave up (or did not)."""
    cost = cost_per_mtok(cluster, chosen.replicas, chosen.tokens_per_s)
    if chosen.replicas == fastest.replicas:
        return f"objective cost: the fastest plan is also the cheapest found (${cost:.4g}/Mtok)"
    fast_cost = cost_per_mtok(cluster, fastest.replicas, fastest.tokens_per_s)
    return (
        f"objective cost: ${cost:.4g} per million tokens at {chosen.tokens_per_s:,.0f} tokens/s;"
        f" the fastest plan found ({fastest.tokens_per_s:,.0f} tokens/s) costs "
        f"${fast_cost:.4g}/Mtok (chips a plan leaves unused are not paid for)"
    )
