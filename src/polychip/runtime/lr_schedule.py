"""The learning rate of each optimizer step: a linear warm-up, then a constant rate or a cosine
or linear decay to a floor (not to be confused with the pipeline schedule of
:mod:`polychip.plan.schedule`).

``lr_at(step)`` is a pure function of the 0-based step index, so every rank computes the same
rate for the same step with no communication, and a run resumed at step ``t`` continues
exactly where it stopped. Its state (:meth:`LRSchedule.state_dict`) is only its parameters: a
checkpoint keeps the schedule it was trained under.

- warm-up (``warmup_steps`` > 0): step ``t < warmup_steps`` uses ``lr * (t + 1) / warmup_steps``
  (the first step is not wasted at rate 0; step ``warmup_steps - 1`` reaches ``lr``);
- then, over steps ``warmup_steps .. decay_steps``, progress ``p`` goes from 0 to 1:
  ``constant`` keeps ``lr``; ``cosine`` is ``min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2``;
  ``linear`` is ``lr - (lr - min_lr) * p``; after ``decay_steps`` the rate stays ``min_lr``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from polychip.runtime.errors import RuntimeSetupError

LRKind = Literal["constant", "cosine", "linear"]
LR_KINDS: tuple[LRKind, ...] = ("constant", "cosine", "linear")
MIN_LR_FRACTION = 0.1
"""The default floor of a decay: a tenth of the peak (Chinchilla, Llama 2)."""


@dataclass
class LRSchedule:
    kind: LRKind
    lr: float  # the peak rate, reached at the end of the warm-up
    min_lr: float  # the floor of a decay
    warmup_steps: int
    decay_steps: int  # the step at which the decay reaches min_lr (the run's length)

    def __post_init__(self) -> None:
        if self.kind not in LR_KINDS:
            raise RuntimeSetupError(
                f"lr schedule {self.kind!r}: choose one of {', '.join(LR_KINDS)}")
        if not self.lr > 0:
            raise RuntimeSetupError(f"lr={self.lr}: the learning rate must be > 0")
        if not 0 <= self.min_lr <= self.lr:
            raise RuntimeSetupError(
                f"min_lr={self.min_lr}, lr={self.lr}: the floor must be in [0, lr]; give a "
                f"smaller --min-lr")
        if self.warmup_steps < 0:
            raise RuntimeSetupError(
                f"warmup_steps={self.warmup_steps}: give 0 (no warm-up) or more steps")
        if self.decay_steps < 1:
            raise RuntimeSetupError(
                f"decay_steps={self.decay_steps}: the decay must last at least 1 step")

    @classmethod
    def of(cls, kind: LRKind, lr: float, *, min_lr: float | None = None,
           warmup_steps: int = 0, decay_steps: int = 1) -> LRSchedule:
        """``min_lr`` None: :data:`MIN_LR_FRACTION` of ``lr``."""
        floor = MIN_LR_FRACTION * lr if min_lr is None else min_lr
        return cls(kind, lr, floor, warmup_steps, decay_steps)

    def lr_at(self, step: int) -> float:
        """The learning rate of 0-based step ``step``."""
        if step < 0:
            raise RuntimeSetupError(f"step={step}: steps are counted from 0")
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        span = self.decay_steps - self.warmup_steps
        progress = 1.0 if span <= 0 else min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "cosine":
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr - (self.lr - self.min_lr) * progress

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restored = LRSchedule(state["kind"], float(state["lr"]), float(state["min_lr"]),
                              int(state["warmup_steps"]), int(state["decay_steps"]))
        self.kind, self.lr, self.min_lr = restored.kind, restored.lr, restored.min_lr
        self.warmup_steps, self.decay_steps = restored.warmup_steps, restored.decay_steps
