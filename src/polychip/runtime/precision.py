"""Mixed precision as large-model training does it (Micikevicius et al., *Mixed Precision
Training*, 2018; Megatron-LM; DeepSpeed): which dtype holds what, and fp16's loss scaling.

From the plan's ``job.precision``:

- ``bf16`` / ``fp16``: 16-bit weights for compute (activations follow); fp32 master weights
  and AdamW state held by the optimizer (for its shard under ZeRO-1); micro-batch gradients
  accumulated in a buffer of ``job.grad_reduce_dtype`` (fp32 by default) and reduced in it;
  fp16 adds dynamic loss scaling (:class:`LossScaler`).
- ``fp32`` / ``tf32``: fp32 everywhere, the weights their own master; ``tf32`` lets the
  matrix units round their inputs to TF32 (``torch.set_float32_matmul_precision("high")``,
  the CUDA matmul/cuDNN TF32 switches), ``fp32`` asks for full fp32 products.

``TrainConfig.dtype`` overrides all of it for exactness tests (float64): the model, the
gradients, their reduction and the optimizer in that one dtype. This is the memory the cost
model prices (docs/cost-model.md): weights ``compute_bytes``, the gradient buffer
``reduce_bytes``, the optimizer 12 bytes per parameter (8 when the weights are fp32), over the
ZeRO-1 group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from polychip.spec.job import TrainingJob

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
_JOB_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
               "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    compute: torch.dtype  # weights and activations
    grad: torch.dtype  # the gradient buffer: accumulation over micro-batches and reduction
    master: torch.dtype | None  # the optimizer's copy of the weights (None: the weights)
    loss_scaling: bool  # fp16: dynamic loss scaling
    tf32: bool  # fp32 matrix products may round their inputs to TF32

    @property
    def optimizer_dtype(self) -> torch.dtype:
        """The dtype of the optimizer's weights and state."""
        return self.master or self.compute


def precision_of(job: TrainingJob, override: str | None = None) -> Precision:
    """What the plan's job asks for, or one ``override`` dtype for everything."""
    if override is not None:
        dtype = DTYPES[override]
        return Precision(dtype, dtype, None, False, False)
    compute = _JOB_DTYPES[job.precision]
    mixed = compute.itemsize == 2
    return Precision(compute, _JOB_DTYPES[job.grad_reduce_dtype],
                     torch.float32 if mixed else None, job.precision == "fp16",
                     job.precision == "tf32")


def use_matmul_precision(precision: Precision, device: torch.device) -> None:
    """fp32 products in full (``fp32``) or through TF32 matrix units (``tf32``)."""
    torch.set_float32_matmul_precision("high" if precision.tf32 else "highest")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision.tf32
        torch.backends.cudnn.allow_tf32 = precision.tf32


class LossScaler:
    """Dynamic loss scaling for fp16 (as torch.amp.GradScaler and Megatron do): the loss is
    multiplied by ``scale`` before the backward and the gradients divided by it before the
    step; a step whose gradients hold an inf or a NaN (on any rank) is skipped and the scale
    halved; after ``growth_interval`` good steps in a row it doubles."""

    def __init__(self, scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 min_scale: float = 1.0) -> None:
        self.scale, self.growth_factor, self.backoff_factor = scale, growth_factor, backoff_factor
        self.growth_interval, self.min_scale = growth_interval, min_scale
        self.good_steps = 0
        self.skipped = 0

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.scale = max(self.min_scale, self.scale * self.backoff_factor)
            self.good_steps = 0
            self.skipped += 1
            return
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale *= self.growth_factor

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
        self.skipped = int(state.get("skipped", 0))
