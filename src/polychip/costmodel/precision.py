"""Bytes per parameter by precision: the model state a device holds and the traffic of one
AdamW step (the mixed-precision convention of docs/cost-model.md, "Model state").

Mixed precision (bf16, fp16): weights in the compute dtype, a gradient buffer in the
reduction dtype (micro-batch gradients accumulate there), fp32 master weights + AdamW m and v
(12 bytes, sharded over the ZeRO-1 group). fp32 and tf32 jobs keep fp32 weights that are
their own master: 8 bytes of optimizer state (m, v).
"""

from __future__ import annotations

from dataclasses import dataclass

from polychip.spec.job import TrainingJob

FP32_BYTES = 4


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of one device's model state."""

    weights: int
    grads: int
    optimizer: int  # before ZeRO-1 sharding

    @staticmethod
    def of(job: TrainingJob) -> StateBytes:
        master = FP32_BYTES if job.mixed_precision else 0
        return StateBytes(job.compute_bytes, job.reduce_bytes, master + 2 * FP32_BYTES)


def adamw_step_bytes(job: TrainingJob) -> int:
    """Bytes one AdamW step moves per owned parameter. Mixed: read and write the fp32
    master, m and v (24), read the reduce-dtype gradient, write the compute-dtype weight.
    fp32/tf32: read and write the weight, m and v (24), read the fp32 gradient."""
    state = 6 * FP32_BYTES
    if job.mixed_precision:
        return state + job.reduce_bytes + job.compute_bytes
    return state + job.reduce_bytes
