"""The pipeline half of `CostModel`: a replica's pipeline under its schedule, the closed
forms of `pipeline.py` (1F1B, GPipe, interleaved 1F1B) and `pipeline_zb.py` (ZB-H1) over the
cost model's stage and transfer times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from polychip.costmodel.classes import ReplicaClasses
from polychip.costmodel.compute import StageTimes
from polychip.costmodel.pipeline import PipelineForm, schedule_form
from polychip.costmodel.pipeline_zb import ZeroBubbleForm
from polychip.plan.plan import Replica

if TYPE_CHECKING:
    from polychip.costmodel.estimate import CostModel


class PipelineCost:
    """Mixed into `CostModel`: `pipeline_form`, `pipeline_time_s`, `pipeline_floor_s`,
    `wrap_time_s`."""

    def pipeline_form(self: CostModel, replica: Replica, schedule: str, virtual_stages: int = 1
                      ) -> PipelineForm | ZeroBubbleForm:
        """The closed form of the replica's pipeline under `schedule` (pipeline.py): its
        stages' times (the host work per micro-batch inside the forward) and transfers."""
        mb = replica.micro_batch_size
        stages = []
        for i, st in enumerate(replica.stages):
            t = self.times_of(replica, i, schedule)
            host = self.host_times(self.chip(st.chip), mb)[0]
            stages.append(StageTimes(t.fwd_s + host, t.bwd_s, t.wgrad_s))
        comms = [self.boundary_time_s(replica, i) for i in range(replica.num_stages - 1)]
        return schedule_form(schedule, stages, comms, self.job.overlap_p2p, virtual_stages,
                             self.wrap_time_s(replica))

    def wrap_time_s(self: CostModel, replica: Replica) -> float:
        """Activations of one micro-batch from the last stage back to the first (interleaved
        1F1B's chunk boundaries wrap around)."""
        last, first = replica.stages[-1], replica.stages[0]
        n_bytes = self.activation_bytes(replica.micro_batch_size)
        return self.transfer_time_s(last.node, first.node, n_bytes)

    def pipeline_time_s(self: CostModel, replica: Replica, schedule: str, virtual_stages: int = 1
                        ) -> tuple[float, float]:
        """(step seconds of the pipeline, busy device-seconds) under `schedule`: the closed
        form of 1F1B, GPipe, interleaved 1F1B (`virtual_stages` chunks) or ZB-H1
        (`pipeline_form`)."""
        m = replica.num_micro_batches
        span = self.pipeline_form(replica, schedule, virtual_stages).span_s(m)
        busy = m * sum(self.times_of(replica, i, schedule).total_s * st.tp
                       for i, st in enumerate(replica.stages))
        return span, busy

    def pipeline_floor_s(self: CostModel, replicas: Sequence[Replica], schedule: str,
                         virtual_stages: int = 1) -> float:
        """The slowest replica's pipeline under `schedule`, each class of identical
        replicas priced once: the part of `evaluate`'s step that every other part (the
        exposed sync, the optimizer, host work per step) only adds to, so never more than
        the step. Stage times only grow with recompute, so the floor of replicas without it
        holds for them with it too."""
        v = virtual_stages if schedule == "interleaved-1f1b" else 1
        return max(self.pipeline_form(r, schedule, v).span_s(r.num_micro_batches)
                   for r in ReplicaClasses.of(self, replicas).representatives)
