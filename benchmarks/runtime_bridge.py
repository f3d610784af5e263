"""Cross-island gradient sync of multi-rank islands: the bytes on an island leader's bridge
link against the cost model's, and the sharded bridge's time against a leader-only one.

Two islands of ``p`` ranks each (cpu-fast on node 0, cpu-slow on node 1: two vendors, so two
islands; gloo everywhere, no emulation), one data-parallel replica per rank.

- Bytes: one training step under `polychip.runtime.commcount.count_calls`; the bytes rank 0
  (the lowest rank of island 0, its leader in a leader-only scheme) sends over the bridge,
  by the ring algorithm, ÷ the bytes the cost model's hops charge it for the same step
  (`costmodel.gradsync.segment_hops`). 1.0 (within padding and the loss slot) for the sharded
  bridge; a leader-only bridge would show about p.
- Time: the same gradient-sized fp32 buffer all-reduced across the islands by polychip's
  description (reduce-scatter in each island, every rank bridging its shard, all-gather) and
  by the leader-only scheme it replaced (reduce to the island's lowest rank, all-reduce among
  the leaders, broadcast back), alternating, the median of each; and the bridge step alone
  of each. On one host every "link" is loopback sharing the same memory and cores: the ratio
  shows the algorithms' cost here, not separate NICs'.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import timedelta

from polychip.costmodel import CostModel, LinkKind
from polychip.costmodel.gradsync import segment_hops
from polychip.plan import Plan, Replica, Stage, validate_plan
from polychip.plan.collectives import BRIDGE, describe
from polychip.plan.segments import grad_segments
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec


def bridge_plan(model: ModelSpec, ranks_per_island: int, seq_len: int) -> Plan:
    p = ranks_per_island
    cluster = cluster_from_dict({"name": "two-islands", "nodes": [
        {"chip": "cpu-fast", "count": 1, "chips_per_node": p, "nic_gbps": 10},
        {"chip": "cpu-slow", "count": 1, "chips_per_node": p, "nic_gbps": 10}]})
    job = TrainingJob(2 * 2 * p, seq_len, precision="fp32")
    plan = Plan(cluster, model, job, tuple(
        Replica((Stage(0, model.num_layers, node, (d,), chip),), 2, 2)
        for node, chip in ((0, "cpu-fast"), (1, "cpu-slow")) for d in range(p)))
    validate_plan(plan)
    return plan


def model_bridge_bytes(plan: Plan, rank: int) -> float:
    """Bytes the cost model's hops charge ``rank`` on the bridge in one step."""
    cm = CostModel(plan.cluster, plan.model, plan.job)
    return sum(h.n_bytes for seg in grad_segments(plan)
               for _, hops in segment_hops(cm, plan.replicas, seg, "all-reduce",
                                           cm.job.reduce_bytes)
               for h in hops if h.src == rank and h.kind is LinkKind.BRIDGE)


@dataclass(frozen=True)
class BridgeTask:
    repeats: int
    emulate: bool = False

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=300)

    def __call__(self, plan: Plan, rank: int) -> dict | None:
        import torch.distributed as dist

        from polychip.runtime.commcount import count_calls, sent_bytes
        from polychip.runtime.topology import build_topology
        from polychip.runtime.train import TrainConfig, Trainer

        config = TrainConfig(steps=1, max_corpus_bytes=256 * 1024)
        trainer = Trainer(plan, config, build_topology(plan, rank, emulate=False))
        roles = trainer.topology.roles
        trainer.step(0)  # warm-up
        with count_calls() as records:
            trainer.step(1)
        measured = sent_bytes(records, lambda r: roles[r].island).get(BRIDGE, 0.0)
        numel = trainer.grads.buffer.numel()

        times = _time_schemes(rank, roles, tuple(tuple(i) for i in trainer.topology.islands),
                              numel, self.repeats)
        out = {"measured_bridge_bytes": measured, "buffer_bytes": numel * 4,
               "times": times}
        gathered: list[dict | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, out)
        return {"ranks": gathered} if rank == 0 else None


def _time_schemes(rank: int, roles, islands: tuple[tuple[int, ...], ...], numel: int,
                  repeats: int) -> dict[str, list[float]]:
    """Seconds of each scheme (and of its bridge step alone), alternating."""
    import torch
    import torch.distributed as dist

    from polychip.runtime.grads import RankCollective
    from polychip.runtime.groups import GroupMaker, rank_collective

    maker = GroupMaker(rank, timedelta(seconds=300))
    sharded = rank_collective(maker, describe("all-reduce", islands), roles)
    mine = next(i for i in islands if rank in i)
    made = [maker.get(i, "gloo", "baseline") for i in islands]  # collective: every rank
    island_group = made[islands.index(mine)]
    leaders = maker.get([min(i) for i in islands], "gloo", "baseline-bridge")

    def leader_only(t: torch.Tensor) -> float:
        dist.reduce(t, dst=min(mine), group=island_group)
        begin = time.perf_counter()
        if leaders is not None:
            dist.all_reduce(t, group=leaders)
        bridge_s = time.perf_counter() - begin
        dist.broadcast(t, src=min(mine), group=island_group)
        return bridge_s

    # reduce-scatter, bridge, all-gather (islands of 2 ranks or more), each timed apart
    rs, cross, ag = (RankCollective(sharded.description, rank, (s,)) for s in sharded.steps)

    def sharded_run(t: torch.Tensor) -> float:
        rs.run(t)
        begin = time.perf_counter()
        cross.run(t)
        bridge_s = time.perf_counter() - begin
        ag.run(t)
        return bridge_s

    times: dict[str, list[float]] = {k: [] for k in ("sharded", "leader", "sharded_bridge",
                                                     "leader_bridge")}
    buffer = torch.randn(numel + -numel % sharded.description.granularity)
    for _ in range(repeats):
        for name, run in (("sharded", sharded_run), ("leader", leader_only)):
            t = buffer.clone()
            dist.barrier()
            begin = time.perf_counter()
            bridge_s = run(t)
            times[name].append(time.perf_counter() - begin)
            times[f"{name}_bridge"].append(bridge_s)
    return times


def bridge(model: ModelSpec, ranks_per_island: int, seq_len: int, repeats: int) -> dict:
    """Launch the two islands on this machine and summarise (``ranks_per_island`` >= 2)."""
    from polychip.runtime.launch import launch_local

    assert ranks_per_island >= 2, "a leader-only bridge differs only with several ranks"
    plan = bridge_plan(model, ranks_per_island, seq_len)
    result = launch_local(plan, BridgeTask(repeats))[0]
    leader = result["ranks"][0]
    modelled = model_bridge_bytes(plan, 0)

    def median(rank: dict, key: str) -> float:
        return statistics.median(rank["times"][key])

    # a collective lasts as long as its slowest rank: the worst rank's median
    worst = {k: max(median(r, k) for r in result["ranks"])
             for k in ("sharded", "leader", "sharded_bridge", "leader_bridge")}
    return {
        "ranks_per_island": ranks_per_island,
        "model_params": model.num_params,
        "buffer_bytes": leader["buffer_bytes"],
        "leader_bridge_bytes_measured": leader["measured_bridge_bytes"],
        "leader_bridge_bytes_model": modelled,
        "bridge_bytes_ratio": leader["measured_bridge_bytes"] / modelled,
        # the leaders' all-reduce of the whole buffer between two islands: 2 (k - 1)/k = 1
        "leader_only_bridge_bytes": leader["buffer_bytes"],
        "sync_s": {"sharded": worst["sharded"], "leader_only": worst["leader"]},
        "bridge_step_s": {"sharded": worst["sharded_bridge"],
                          "leader_only": worst["leader_bridge"]},
        "sharded_over_leader_only": worst["sharded"] / worst["leader"],
        "bridge_step_sharded_over_leader_only": worst["sharded_bridge"] / worst["leader_bridge"],
        "repeats": len(leader["times"]["sharded"]),
    }
