"""One entry point: the cost of a set of pipeline replicas on a cluster.

step = slowest replica's pipeline (the schedule's closed form, `pipeline.py`; each stage's
micro-batch includes the runtime's host work where a profile measured it) + gradient sync
across the data-parallel holders of every layer (`gradsync.py`: hierarchical across islands,
after each stage's last backward) + the optimizer step + the runtime's host work per step.
The planner, the simulator and the runtime's emulated clocks all read their per-stage times
from here, so they cannot disagree about a chip's speed. Memory: `stagememory.StageMemory`;
the pipeline's closed form: `pipelinecost.PipelineCost`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping

from polychip.costmodel import profiled
from polychip.costmodel.classes import ReplicaClasses
from polychip.costmodel.comm import LinkKind, bridge_time_s, p2p_time_s
from polychip.costmodel.compute import StageTimes, block_times, embedding_times, head_times
from polychip.costmodel.gradsync import dp_sync_time_s, segment_sync_s
from polychip.costmodel.kernels import stream_s
from polychip.costmodel.links import chips_in_use, measured_link_bw, nic_share, node_link
from polychip.costmodel.measured import ComputeProfile
from polychip.costmodel.memory import BlockActivations, EndActivations, stage_params
from polychip.costmodel.pipelinecost import PipelineCost
from polychip.costmodel.plancost import PlanCost
from polychip.costmodel.precision import StateBytes, adamw_step_bytes
from polychip.costmodel.stagememory import StageMemory
from polychip.plan.plan import Replica, Stage
from polychip.plan.segments import Segment
from polychip.spec.accelerators import Accelerator
from polychip.spec.cluster import Cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

ANALYTIC = {"block": block_times, "embedding": embedding_times, "head": head_times}
__all__ = ["CostModel", "PlanCost"]


class CostModel(StageMemory, PipelineCost):
    def __init__(self, cluster: Cluster, model: ModelSpec, job: TrainingJob,
                 profile: ComputeProfile | None = None):
        self.cluster, self.model, self.job, self.profile = cluster, model, job, profile
        self.nodes = cluster.nodes
        self._chips = {c.name: c for c in cluster.chips()}
        self._stage_cache: dict[tuple, StageTimes] = {}
        self._component_cache: dict[tuple, StageTimes] = {}
        self._activation_cache: dict[tuple, tuple[BlockActivations, EndActivations]] = {}
        self.state_bytes = StateBytes.of(job)
        # Per node, the chips the replicas this model is bound to use there (`under`);
        # None: not bound, every chip of a node shares its NIC.
        self.chips_used: Mapping[int, int] | None = None
        self.sync_cache: dict[tuple, tuple] = {}  # piecesync.segment_sync_s
        self._link_cache: dict[tuple[int, int], tuple[LinkKind, float, float]] = {}
        self.classes_memo: dict[int, tuple] = {}  # classes.ReplicaClasses.of, by tuple

    def under(self, replicas: Iterable[Replica]) -> CostModel:
        """This cost model for `replicas`: a chip's NIC share counts only the chips they use
        on its node. A view sharing every cache (stage times do not depend on it);
        `evaluate` and `simulate` bind themselves."""
        used = chips_in_use(replicas)
        if used == self.chips_used:
            return self
        view = copy.copy(self)
        view.chips_used = used
        return view

    def chip(self, name: str) -> Accelerator:
        return self._chips[name]

    # ---- compute ------------------------------------------------------------------------
    def component_times(self, component: str, chip: Accelerator, tp: int, micro_batch: int
                        ) -> StageTimes:
        """One micro-batch of a `block` (no recompute), the `embedding` or the `head` on one
        TP rank: the profile's measurement where it has the point (`profiled.py`: a measured
        block gets its TP collectives added), else the analytic per-op model. The one place
        a stage's component times come from."""
        key = (component, chip.name, tp, micro_batch)
        hit = self._component_cache.get(key)
        if hit is not None:
            return hit
        if component == "block":
            out = profiled.block_times(self, chip, tp, micro_batch, recompute=False)
        else:
            out = profiled.part_times(self, component, chip, tp, micro_batch)
        if out is None:
            out = ANALYTIC[component](chip, self.model, self.job, micro_batch, tp)
        self._component_cache[key] = out
        return out

    def block_times(self, chip: Accelerator, tp: int, micro_batch: int, recompute: bool
                    ) -> StageTimes:
        """One block; full recompute runs its forward again in its backward (a profile's
        measured recompute backward where it has one)."""
        if recompute:
            measured = profiled.block_times(self, chip, tp, micro_batch, recompute=True)
            if measured is not None:
                return measured
        block = self.component_times("block", chip, tp, micro_batch)
        redo = block.fwd_s if recompute else 0.0  # the re-forward: input-gradient half (B)
        return StageTimes(block.fwd_s, block.bwd_s + redo, block.wgrad_s, redo)

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
        """Forward and backward seconds of one micro-batch on one stage: its blocks (full
        recompute runs each block's forward again in its backward), the embedding on the
        first stage, the head and loss on the last; `wgrad_s`, the backward's weight-gradient
        part, summed the same way. A calibrated compute correction scales all three."""
        key = (chip.name, num_layers, tp, micro_batch, first, last, recompute)
        hit = self._stage_cache.get(key)
        if hit is None:
            hit = self._stage_cache[key] = self.stage_times_by_layers(
                chip, tp, micro_batch, first, last, recompute)(num_layers)
        return hit

    def stage_times_by_layers(self, chip: Accelerator, tp: int, micro_batch: int,
                              first: bool, last: bool, recompute: bool
                              ) -> Callable[[int], StageTimes]:
        """`stage_times` of such a stage as a function of its layer count: the block, ends
        and correction looked up once (a planner prices every count of a stage)."""
        block = self.block_times(chip, tp, micro_batch, recompute)
        ends = [self.component_times(component, chip, tp, micro_batch)
                for component, here in (("embedding", first), ("head", last)) if here]
        correction = profiled.corrections(self, chip.name).compute

        def of(num_layers: int) -> StageTimes:
            fwd, bwd = num_layers * block.fwd_s, num_layers * block.bwd_s
            wgrad, redo = num_layers * block.wgrad_s, num_layers * block.redo_s
            for t in ends:
                fwd, bwd, wgrad = fwd + t.fwd_s, bwd + t.bwd_s, wgrad + t.wgrad_s
            return StageTimes(fwd, bwd, wgrad, redo).scaled(correction)

        return of

    def host_times(self, chip: Accelerator, micro_batch: int) -> tuple[float, float]:
        """(seconds per micro-batch, per step) of the runtime's host work outside its
        phases -- reading the data, Python between actions, zeroing gradients -- where a
        profile measured it (`profiled.host_s`); 0 otherwise (the analytic model prices
        kernels, not the host)."""
        return profiled.host_s(self, chip.name, micro_batch) or (0.0, 0.0)

    def times_of(self, replica: Replica, si: int, schedule: str = "1f1b") -> StageTimes:
        """Stage `si`'s times as `schedule` runs them (zb-h1 splits the backward:
        `StageTimes.split_backward`)."""
        st = replica.stages[si]
        t = self.stage_times(self.chip(st.chip), st.num_layers, st.tp, replica.micro_batch_size,
                             si == 0, si == replica.num_stages - 1, st.recompute)
        return t.split_backward() if schedule == "zb-h1" else t

    # ---- links (links.py) ---------------------------------------------------------------
    def device_nic_bw(self, node: int) -> float:
        """One chip's share of its node's NIC under this plan, bytes/s each direction: the
        node's NIC divided by the chips the bound replicas use on that node (`under`); by
        all the node's chips when the model is not bound to replicas."""
        return nic_share(self.nodes, node, self.chips_used)

    def nic_bw(self, node: int) -> float:
        """A node's NIC bandwidth, each direction (the simulator's fabric shares it)."""
        return self.nodes[node].group.nic_bw_bytes_per_s

    def link(self, node_a: int, node_b: int) -> tuple[LinkKind, float, float]:
        """(kind, bandwidth bytes/s, latency s) between a stage on node_a and one on node_b:
        the cluster's measured link between their groups if declared, else the slower NIC;
        a profile's measured intra-node link where it has the figure (`profiled.link`)."""
        hit = self._link_cache.get((node_a, node_b))
        if hit is None:
            hit = self._link_cache[(node_a, node_b)] = profiled.link(
                self, node_a, node_b, node_link(self.cluster, self.nodes, node_a, node_b))
        return hit

    def measured_link_bw(self, node_a: int, node_b: int) -> float | None:
        """The cluster's measured bandwidth between two nodes (None: the NICs decide)."""
        return measured_link_bw(self.cluster, self.nodes, node_a, node_b)

    def activation_bytes(self, micro_batch: int) -> float:
        """Bytes crossing a stage boundary per micro-batch (activations, or their gradient)."""
        return self.job.compute_bytes * micro_batch * self.job.seq_len * self.model.hidden_size

    def transfer_time_s(self, node_a: int, node_b: int, n_bytes: float) -> float:
        kind, bw, lat = self.link(node_a, node_b)
        if kind is LinkKind.BRIDGE:
            return bridge_time_s(n_bytes, bw, self.cluster.network.host_copy_bw_bytes_per_s, lat)
        return p2p_time_s(n_bytes, bw, lat)

    def boundary_time_s(self, replica: Replica, si: int) -> float:
        """Activations (or their gradients) of one micro-batch from stage si to si + 1."""
        a, b = replica.stages[si], replica.stages[si + 1]
        return self.transfer_time_s(a.node, b.node, self.activation_bytes(replica.micro_batch_size))

    # ---- data-parallel gradient sync (gradsync.py) ---------------------------------------
    def segment_sync_time_s(
        self, replicas: tuple[Replica, ...], segment: Segment, zero1: bool = False
    ) -> float:
        """The gradient sync of one segment among its holders, uncontended: what the
        simulator's `AR[...]` takes alone (gradsync.segment_sync_s)."""
        stages = [replicas[ri].stages[si] for ri, si in segment.holders]
        seconds = segment_sync_s(self, replicas, segment, zero1)
        return seconds * self.grad_sync_correction(stages)

    def dp_sync_time_s(self, replicas: tuple[Replica, ...], zero1: bool = False,
                       virtual_stages: int = 1, schedule: str = "1f1b",
                       overlap: bool | None = None, classes: ReplicaClasses | None = None
                       ) -> float:
        """Gradient sync left after the slowest pipeline, overlapped with the backward by
        default as the job says (gradsync.dp_sync_time_s; ``classes``: the replicas'
        `ReplicaClasses`, if already grouped)."""
        overlap = self.job.overlap_grad_sync if overlap is None else overlap
        classes = classes or ReplicaClasses.of(self, replicas)
        seconds = dp_sync_time_s(self, classes, zero1, virtual_stages, schedule, overlap)
        return seconds * self.grad_sync_correction(
            [s for r in classes.representatives for s in r.stages])

    def grad_sync_correction(self, stages: Iterable[Stage]) -> float:
        """The calibrated factor on a gradient sync among `stages`: the largest
        `corrections.grad_sync` of their chips (a collective runs at its slowest member's
        pace). The one place it is applied: the two entry points above."""
        return max((profiled.corrections(self, st.chip).grad_sync for st in stages),
                   default=1.0)

    # ---- optimizer (memory: stagememory.StageMemory) ------------------------------------
    def optimizer_time_s(self, replicas: tuple[Replica, ...], zero_shards: int) -> float:
        """The slowest device's optimizer step."""
        return max(
            self.stage_optimizer_time_s(r, si, zero_shards)
            for r in replicas
            for si in range(r.num_stages)
        )

    def stage_optimizer_time_s(self, replica: Replica, si: int, zero_shards: int) -> float:
        """AdamW step of one device of stage `si`: a profile's measured step (a fixed part and
        a part per owned parameter) where it has one, else memory bound
        (precision.adamw_step_bytes per owned parameter)."""
        st = replica.stages[si]
        owned = stage_params(self.model, st.num_layers, si == 0, si == replica.num_stages - 1)
        owned /= st.tp * max(zero_shards, 1)
        seconds = profiled.optimizer_s(self, st.chip, owned)
        if seconds is None:
            seconds = stream_s(self.chip(st.chip), owned * adamw_step_bytes(self.job))
        return seconds * profiled.corrections(self, st.chip).optimizer

    # ---- everything ----------------------------------------------------------------------
    def evaluate(
        self,
        replicas: tuple[Replica, ...],
        schedule: str = "1f1b",
        zero1: bool = False,
        virtual_stages: int = 1,
    ) -> PlanCost:
        """Step time, throughput, MFU and per-device memory under `schedule` (1f1b,
        gpipe, interleaved-1f1b with `virtual_stages` chunks, zb-h1): its pipeline's closed
        form, its activations in flight, its gradients' readiness for the sync."""
        zero_shards = len(replicas) if zero1 else 1
        v = virtual_stages if schedule == "interleaved-1f1b" else 1
        classes = ReplicaClasses.of(self, replicas)  # identical replicas priced once
        spans = classes.per_replica(lambda r: self.pipeline_time_s(r, schedule, v))
        pipeline_s = max(s for s, _ in spans)
        dp_s = self.dp_sync_time_s(replicas, zero1, v, schedule, classes=classes)
        opt_s = self.optimizer_time_s(tuple(classes.representatives), zero_shards)
        # the busiest device: its compute, and its host work per micro-batch and per step
        busiest = max(((r.num_micro_batches * self.times_of(r, si, schedule).total_s,
                        r.num_micro_batches, self.host_times(self.chip(st.chip),
                                                             r.micro_batch_size))
                       for r in classes.representatives for si, st in enumerate(r.stages)),
                      key=lambda c: c[0])
        compute_s, m, (host_micro_s, host_step_s) = busiest
        step = pipeline_s + dp_s + opt_s + host_step_s
        tokens_per_s = self.job.tokens_per_step / step
        flops = self.model.training_flops_per_token(self.job.seq_len) * tokens_per_s
        mfu = flops / self.cluster.peak_flops(self.job.precision)
        devices = sum(r.num_devices for r in replicas)
        busy = sum(b for _, b in spans)
        memory, violations = self._memory(classes, schedule, zero_shards, virtual_stages)
        return PlanCost(
            step_time_s=step,
            tokens_per_s=tokens_per_s,
            mfu=mfu,
            pipeline_s=pipeline_s,
            dp_sync_s=dp_s,
            optimizer_s=opt_s,
            bubble_fraction=max(0.0, 1.0 - busy / (devices * pipeline_s)),
            compute_s=compute_s,
            idle_s=m * host_micro_s + host_step_s,
            step_idle_s=host_step_s,
            memory=memory,
            violations=violations,
        )
