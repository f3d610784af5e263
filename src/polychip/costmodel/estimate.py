"""One entry point: the cost of a set of pipeline replicas on a cluster.

step = slowest replica's pipeline (1F1B/GPipe closed form) + gradient sync across the
data-parallel holders of every layer (`gradsync.py`: hierarchical across islands, not
overlapped) + the optimizer step. The planner, the simulator and the runtime's emulated clocks all
read their per-stage times from here, so they cannot disagree about a chip's speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from polychip.costmodel.comm import LinkKind, bridge_time_s, p2p_time_s
from polychip.costmodel.compute import (
    INTRA_NODE_LATENCY_S,
    ComputeProfile,
    StageTimes,
    block_times,
    embedding_times,
    head_times,
)
from polychip.costmodel.gradsync import dp_sync_time_s, segment_sync_s
from polychip.costmodel.memory import (
    MemoryBreakdown,
    in_flight_micro_batches,
    stage_memory,
    stage_params,
)
from polychip.costmodel.pipeline import PipelineForm
from polychip.plan.plan import Estimate, Replica
from polychip.plan.segments import Segment
from polychip.spec.accelerators import Accelerator
from polychip.spec.cluster import Cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

ADAMW_BYTES_PER_PARAM = 28  # read fp32 master, m, v, 16-bit grad; write them + 16-bit weight


@dataclass(frozen=True)
class PlanCost:
    step_time_s: float
    tokens_per_s: float
    mfu: float
    pipeline_s: float
    dp_sync_s: float
    optimizer_s: float
    bubble_fraction: float
    # (replica, stage) -> memory of one device of that stage
    memory: dict[tuple[int, int], MemoryBreakdown] = field(default_factory=dict)
    violations: tuple[str, ...] = ()

    @property
    def feasible(self) -> bool:
        return not self.violations

    def to_estimate(self, replicas: tuple[Replica, ...], cm: CostModel) -> Estimate:
        return Estimate.of_step(
            step_time_s=self.step_time_s,
            tokens_per_s=self.tokens_per_s,
            mfu=self.mfu,
            pipeline_s=self.pipeline_s,
            dp_sync_s=self.dp_sync_s,
            optimizer_s=self.optimizer_s,
            bubble_fraction=self.bubble_fraction,
            memory_rows=(
                (
                    replicas[ri].stages[si].chip,
                    mem.total,
                    cm.chip(replicas[ri].stages[si].chip).memory_bytes,
                )
                for (ri, si), mem in self.memory.items()
            ),
            source="analytic",
        )


class CostModel:
    def __init__(
        self,
        cluster: Cluster,
        model: ModelSpec,
        job: TrainingJob,
        profile: ComputeProfile | None = None,
    ):
        self.cluster, self.model, self.job, self.profile = cluster, model, job, profile
        self.nodes = cluster.nodes
        self._chips = {c.name: c for c in cluster.chips()}
        self._stage_cache: dict[tuple, StageTimes] = {}
        self.sync_cache: dict[tuple, float] = {}  # gradsync.segment_sync_s

    def chip(self, name: str) -> Accelerator:
        return self._chips[name]

    # ---- compute ------------------------------------------------------------------------
    def stage_times(
        self,
        chip: Accelerator,
        num_layers: int,
        tp: int,
        micro_batch: int,
        first: bool,
        last: bool,
        recompute: bool,
    ) -> StageTimes:
        """Forward and backward seconds of one micro-batch on one stage."""
        key = (chip.name, num_layers, tp, micro_batch, first, last, recompute)
        hit = self._stage_cache.get(key)
        if hit is not None:
            return hit
        seq, prec = self.job.seq_len, self.job.precision
        block = None
        if self.profile is not None:
            block = self.profile.block_times(chip.name, tp, micro_batch, seq)
        if block is None:
            block = block_times(chip, self.model, seq, micro_batch, tp, prec)
        fwd = num_layers * block.fwd_s
        bwd = num_layers * (block.bwd_s + (block.fwd_s if recompute else 0.0))
        if first:
            emb = embedding_times(chip, self.model, seq, micro_batch, tp)
            fwd, bwd = fwd + emb.fwd_s, bwd + emb.bwd_s
        if last:
            head = head_times(chip, self.model, seq, micro_batch, tp, prec)
            fwd, bwd = fwd + head.fwd_s, bwd + head.bwd_s
        out = StageTimes(fwd, bwd)
        self._stage_cache[key] = out
        return out

    def times_of(self, replica: Replica, si: int) -> StageTimes:
        st = replica.stages[si]
        return self.stage_times(
            self.chip(st.chip),
            st.num_layers,
            st.tp,
            replica.micro_batch_size,
            si == 0,
            si == replica.num_stages - 1,
            st.recompute,
        )

    # ---- links --------------------------------------------------------------------------
    def device_nic_bw(self, node: int) -> float:
        """A chip's share of its node's NIC when every chip of the node communicates."""
        g = self.nodes[node].group
        return g.nic_bw_bytes_per_s / g.chips_per_node

    def nic_bw(self, node: int) -> float:
        """A node's NIC bandwidth, each direction (the simulator's fabric shares it)."""
        return self.nodes[node].group.nic_bw_bytes_per_s

    def link(self, node_a: int, node_b: int) -> tuple[LinkKind, float, float]:
        """(kind, bandwidth bytes/s, latency s) between a stage on node_a and one on node_b."""
        ga, gb = self.nodes[node_a].group, self.nodes[node_b].group
        net = self.cluster.network
        if node_a == node_b:
            return LinkKind.INTRA_NODE, ga.chip.link_bw_bytes_per_s, INTRA_NODE_LATENCY_S
        bw = min(ga.nic_bw_bytes_per_s, gb.nic_bw_bytes_per_s)
        if ga.chip.island != gb.chip.island:
            return LinkKind.BRIDGE, bw, net.latency_s
        return LinkKind.INTER_NODE, bw, net.latency_s

    def activation_bytes(self, micro_batch: int) -> float:
        return 2.0 * micro_batch * self.job.seq_len * self.model.hidden_size

    def transfer_time_s(self, node_a: int, node_b: int, n_bytes: float) -> float:
        kind, bw, lat = self.link(node_a, node_b)
        if kind is LinkKind.BRIDGE:
            return bridge_time_s(n_bytes, bw, self.cluster.network.host_copy_bw_bytes_per_s, lat)
        return p2p_time_s(n_bytes, bw, lat)

    def boundary_time_s(self, replica: Replica, si: int) -> float:
        """Activations (or their gradients) of one micro-batch from stage si to si + 1."""
        a, b = replica.stages[si], replica.stages[si + 1]
        return self.transfer_time_s(a.node, b.node, self.activation_bytes(replica.micro_batch_size))

    # ---- pipeline -----------------------------------------------------------------------
    def pipeline_time_s(self, replica: Replica, schedule: str) -> tuple[float, float]:
        """(step seconds of the pipeline, busy device-seconds) under 1F1B or GPipe: fill +
        drain of every stage and boundary, plus (M - 1) x the beat (pipeline.PipelineForm:
        the bottleneck, or under 1F1B a window's round trip)."""
        m = replica.num_micro_batches
        totals = [self.times_of(replica, i).total_s for i in range(replica.num_stages)]
        comms = [self.boundary_time_s(replica, i) for i in range(replica.num_stages - 1)]
        span = PipelineForm.of(totals, comms, schedule).span_s(m)
        busy = m * sum(t * replica.stages[i].tp for i, t in enumerate(totals))
        return span, busy

    # ---- data-parallel gradient sync (gradsync.py) ---------------------------------------
    def segment_sync_time_s(
        self, replicas: tuple[Replica, ...], segment: Segment, zero1: bool = False
    ) -> float:
        """The gradient sync of one segment among its holders, uncontended: what the
        simulator's `AR[...]` takes alone (gradsync.segment_sync_s)."""
        return segment_sync_s(self, replicas, segment, zero1)

    def dp_sync_time_s(
        self,
        replicas: tuple[Replica, ...],
        zero1: bool = False,
        virtual_stages: int = 1,
        schedule: str = "1f1b",
        overlap: bool | None = None,
    ) -> float:
        """Gradient sync left after the slowest pipeline, overlapped with the backward by
        default as the job says (gradsync.dp_sync_time_s)."""
        overlap = self.job.overlap_grad_sync if overlap is None else overlap
        return dp_sync_time_s(self, replicas, zero1, virtual_stages, schedule, overlap)

    # ---- memory and optimizer ------------------------------------------------------------
    def memory_of(
        self, replica: Replica, si: int, schedule: str, zero_shards: int, virtual_stages: int = 1
    ) -> MemoryBreakdown:
        """Peak memory of one device of stage `si`, with the activations the schedule's
        closed form says it holds at its peak."""
        in_flight = in_flight_micro_batches(
            schedule, si, replica.num_stages, replica.num_micro_batches, virtual_stages
        )
        return self.stage_memory_at(replica, si, in_flight, zero_shards)

    def stage_memory_at(
        self, replica: Replica, si: int, in_flight: int, zero_shards: int
    ) -> MemoryBreakdown:
        """Memory of one device of stage `si` holding `in_flight` micro-batches'
        activations (the simulator counts them as the schedule runs)."""
        st = replica.stages[si]
        return stage_memory(
            self.model,
            seq_len=self.job.seq_len,
            num_layers=st.num_layers,
            first=si == 0,
            last=si == replica.num_stages - 1,
            tp=st.tp,
            micro_batch=replica.micro_batch_size,
            in_flight=in_flight,
            recompute=st.recompute,
            zero_shards=zero_shards,
            capacity_bytes=self.chip(st.chip).memory_bytes,
        )

    def optimizer_time_s(self, replicas: tuple[Replica, ...], zero_shards: int) -> float:
        """The slowest device's optimizer step."""
        return max(
            self.stage_optimizer_time_s(r, si, zero_shards)
            for r in replicas
            for si in range(r.num_stages)
        )

    def stage_optimizer_time_s(self, replica: Replica, si: int, zero_shards: int) -> float:
        """AdamW step of one device of stage `si` (memory bound)."""
        st = replica.stages[si]
        owned = stage_params(self.model, st.num_layers, si == 0, si == replica.num_stages - 1)
        owned /= st.tp * max(zero_shards, 1)
        return owned * ADAMW_BYTES_PER_PARAM / self.chip(st.chip).memory_bw_bytes_per_s

    # ---- everything ----------------------------------------------------------------------
    def evaluate(
        self,
        replicas: tuple[Replica, ...],
        schedule: str = "1f1b",
        zero1: bool = False,
        virtual_stages: int = 1,
    ) -> PlanCost:
        """Step time, throughput, MFU and per-device memory. `virtual_stages` (interleaved
        1F1B only) raises the activations in flight; the time is 1F1B's (conservative)."""
        zero_shards = len(replicas) if zero1 else 1
        spans = [self.pipeline_time_s(r, schedule) for r in replicas]
        pipeline_s = max(s for s, _ in spans)
        v = virtual_stages if schedule == "interleaved-1f1b" else 1
        dp_s = self.dp_sync_time_s(replicas, zero1, v, schedule)
        opt_s = self.optimizer_time_s(replicas, zero_shards)
        step = pipeline_s + dp_s + opt_s
        tokens_per_s = self.job.tokens_per_step / step
        flops = self.model.training_flops_per_token(self.job.seq_len) * tokens_per_s
        mfu = flops / self.cluster.peak_flops(self.job.precision)
        devices = sum(r.num_devices for r in replicas)
        busy = sum(b for _, b in spans)
        memory: dict[tuple[int, int], MemoryBreakdown] = {}
        violations: list[str] = []
        for ri, r in enumerate(replicas):
            for si, st in enumerate(r.stages):
                mem = self.memory_of(r, si, schedule, zero_shards, virtual_stages)
                memory[(ri, si)] = mem
                cap = self.chip(st.chip).memory_bytes
                if mem.total > cap:
                    violations.append(
                        f"replica {ri} stage {si} on {st.chip}: needs {mem.total / 2**30:.1f} GiB "
                        f"of {cap / 2**30:.0f} GiB"
                    )
        return PlanCost(
            step_time_s=step,
            tokens_per_s=tokens_per_s,
            mfu=mfu,
            pipeline_s=pipeline_s,
            dp_sync_s=dp_s,
            optimizer_s=opt_s,
            bubble_fraction=max(0.0, 1.0 - busy / (devices * pipeline_s)),
            memory=memory,
            violations=tuple(violations),
        )
