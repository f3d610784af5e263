"""Why nothing fits: the InfeasibleError that names the limit and what would fix it."""

from __future__ import annotations

from polychip.costmodel import CostModel
from polychip.planner.shapes import ShapeBuilder
from polychip.planner.space import Segment, tp_degrees
from polychip.spec.errors import InfeasibleError

GIB = 1024**3


def infeasible_error(cm: CostModel, builder: ShapeBuilder, max_stages: int) -> InfeasibleError:
    cluster, model, job = cm.cluster, cm.model, cm.job
    rec = job.allow_recompute
    devices = cluster.num_devices
    shards = min(devices, job.global_batch) if job.allow_zero1 else 1
    largest = max(cluster.groups, key=lambda g: g.chip.memory_bytes)
    cap_gib = largest.chip.memory_bytes / GIB
    fixes = []
    if not rec:
        fixes.append("allow recompute (drop --no-recompute)")
    if not job.allow_zero1:
        fixes.append("allow ZeRO-1 (drop --no-zero1)")
    fixes += ["add chips", "lower --seq-len", "or pick a smaller model"]
    fix = ", ".join(fixes)

    # one layer on the roomiest chip with its widest TP
    tp = max(tp_degrees(largest, model, job))
    one = cm.stage_memory(
        largest.chip, 1, tp, 1, first=False, last=False, in_flight=1, recompute=rec,
        zero_shards=shards,
    )  # fmt: skip
    if one.total > largest.chip.memory_bytes:
        return InfeasibleError(
            f"{model.name}: one transformer layer at --seq-len {job.seq_len} needs "
            f"{one.total / GIB:.1f} GiB per chip even with TP={tp} on {largest.chip.name} "
            f"(largest chip has {cap_gib:.0f} GiB): {fix}"
        )
    # the whole model as one pipeline, memory pooled over every chip
    need = cm.stage_memory(
        largest.chip, model.num_layers, 1, 1, first=True, last=True, in_flight=1,
        recompute=rec, zero_shards=shards,
    )  # fmt: skip
    need_bytes = need.total - need.reserve
    have = sum(
        g.num_devices * (g.chip.memory_bytes - cm.reserve_bytes(g.chip)) for g in cluster.groups
    )
    if need_bytes > have:
        zero = f", optimizer state sharded over up to {shards} replicas" if shards > 1 else ""
        return InfeasibleError(
            f"{model.name} needs >= {need_bytes / GIB:,.0f} GiB for one pipeline replica "
            f"(weights, gradients, AdamW state{zero}, activations at micro-batch 1) but all "
            f"{devices} chips together hold {have / GIB:,.0f} GiB after the runtime reserve "
            f"(largest chip has {cap_gib:.0f} GiB): {fix}"
        )
    # would fit with enough replicas to shard optimizer state: the batch is the limit
    if job.allow_zero1 and shards < devices:
        for g in cluster.groups:
            for t in tp_degrees(g, model, job):
                for n in range(1, max_stages + 1):
                    if n * t <= g.num_devices and builder.build(
                        (Segment(g.index, n, t),), 1, devices
                    ):
                        return InfeasibleError(
                            f"global batch {job.global_batch} is too small for the replicas "
                            f"{model.name} needs: it fits only with ZeRO-1 sharding optimizer "
                            f"state over more replicas than there are sequences (each replica "
                            f"needs at least one): raise --global-batch or add chips"
                        )
    return InfeasibleError(
        f"{model.name}: no pipeline of at most {max_stages} stages fits memory on any set of "
        f"chips (largest chip has {cap_gib:.0f} GiB): raise --max-stages, {fix}"
    )
