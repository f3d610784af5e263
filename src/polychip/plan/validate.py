"""A plan's invariants. Planner output and hand-written plans both pass through here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from polychip.spec.errors import PolychipError

if TYPE_CHECKING:
    from polychip.plan.plan import Plan, Stage


class PlanError(PolychipError):
    """A plan file that is not a plan, of another version, or inconsistent with itself."""


def validate_plan(plan: Plan, file: str | None = None) -> None:
    """Raise PlanError naming the field of the first broken invariant."""
    where = f"{file}: " if file else ""
    used: dict[tuple[int, int], str] = {}  # (node, device) -> the stage that holds it
    for ri in range(len(plan.replicas)):
        _check_replica(plan, ri, where, used)
    total = sum(rep.batch_size for rep in plan.replicas)
    if total != plan.job.global_batch:
        raise PlanError(
            f"{where}replicas: batch shares sum to {total}, the job's global batch "
            f"is {plan.job.global_batch}"
        )
    if plan.virtual_stages < 1:
        raise PlanError(f"{where}virtual_stages: {plan.virtual_stages} must be ≥ 1")
    if plan.schedule != "interleaved-1f1b" and plan.virtual_stages != 1:
        raise PlanError(
            f"{where}virtual_stages: {plan.virtual_stages} needs schedule interleaved-1f1b"
        )
    limit = plan.model.max_seq_len
    if limit is not None and plan.job.seq_len > limit:
        raise PlanError(
            f"{where}job.seq_len: {plan.job.seq_len} exceeds the {limit} learned positions of "
            f"model {plan.model.name!r}: lower seq_len to at most {limit}"
        )


def _check_replica(plan: Plan, ri: int, where: str, used: dict[tuple[int, int], str]) -> None:
    """Replica ``ri``: its stages cover every layer once, in order, on free chip slots; its
    batch and micro-batch sizes."""
    rep, model = plan.replicas[ri], plan.model
    at = f"{where}replicas[{ri}]"
    expect = 0
    for si, st in enumerate(rep.stages):
        here = f"{at}.stages[{si}]"
        if st.layer_start != expect or st.layer_end < st.layer_start:
            raise PlanError(
                f"{here}.layers: [{st.layer_start}, {st.layer_end}) must start at layer "
                f"{expect} and not end before it: each layer on exactly one stage per "
                f"replica"
            )
        if st.num_layers == 0:
            _check_empty_stage(plan, rep.num_stages, si, here)
        expect = st.layer_end
        _check_placement(plan, st, here, here.removeprefix(where), used)
    if expect != model.num_layers:
        raise PlanError(
            f"{at}.stages: cover layers [0, {expect}) but the model has "
            f"{model.num_layers}: each layer on exactly one stage"
        )
    sizes = {"batch_size": rep.batch_size, "micro_batch_size": rep.micro_batch_size}
    for name, value in sizes.items():
        if value < 1:
            raise PlanError(f"{at}.{name}: {value} must be ≥ 1 sequence")
    if rep.batch_size % rep.micro_batch_size:
        raise PlanError(
            f"{at}.micro_batch_size: {rep.micro_batch_size} must divide "
            f"batch_size {rep.batch_size}"
        )


def _check_placement(plan: Plan, st: Stage, here: str, name: str,
                     used: dict[tuple[int, int], str]) -> None:
    """A stage's node, chip, device slots (each used once in the plan) and TP degree."""
    nodes, model = plan.cluster.nodes, plan.model
    if not 0 <= st.node < len(nodes):
        raise PlanError(
            f"{here}.node: {st.node} is not a node of the cluster (it has {len(nodes)})"
        )
    group = nodes[st.node].group
    if not st.local_devices:
        raise PlanError(f"{here}.local_devices: empty; a stage needs at least one chip")
    if group.chip.name != st.chip:
        raise PlanError(
            f"{here}.chip: {st.chip!r} but node {st.node} has {group.chip.name!r} chips"
        )
    for dev in st.local_devices:
        if not 0 <= dev < group.chips_per_node:
            raise PlanError(
                f"{here}.local_devices: {dev} is not a chip slot of node "
                f"{st.node} (it has {group.chips_per_node})"
            )
        if (st.node, dev) in used:
            raise PlanError(
                f"{here}.local_devices: device {dev} of node {st.node} is "
                f"already used by {used[(st.node, dev)]}"
            )
        used[(st.node, dev)] = name
    if model.num_heads % st.tp or model.num_kv_heads % st.tp:
        raise PlanError(
            f"{here}.tp: {st.tp} must divide num_heads {model.num_heads} "
            f"and num_kv_heads {model.num_kv_heads}"
        )


def _check_empty_stage(plan: Plan, num_stages: int, si: int, here: str) -> None:
    """A stage of no transformer block holds only the embedding (the first stage of a
    pipeline) or only the final norm, head and loss (the last one)."""
    if num_stages == 1 or 0 < si < num_stages - 1:
        raise PlanError(
            f"{here}.layers: empty; only the first stage of a pipeline (holding just the "
            f"embedding) or its last (just the head) may have no transformer block: give this "
            f"stage at least one layer"
        )
    if plan.schedule == "interleaved-1f1b" and plan.virtual_stages > 1:
        raise PlanError(
            f"{here}.layers: empty, under interleaved-1f1b every stage needs a multiple of "
            f"virtual_stages {plan.virtual_stages} layers; use schedule 1f1b or gpipe"
        )
