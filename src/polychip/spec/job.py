"""The training job: what to train, how big a step, which memory savers are allowed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from polychip.spec.errors import PolychipError


@dataclass(frozen=True)
class TrainingJob:
    global_batch: int  # sequences per optimizer step
    seq_len: int
    precision: Literal["bf16", "fp16"] = "bf16"
    optimizer: Literal["adamw"] = "adamw"
    allow_recompute: bool = True
    allow_zero1: bool = True

    def __post_init__(self) -> None:
        if self.global_batch < 1:
            raise PolychipError(f"global batch {self.global_batch} must be ≥ 1 sequence")
        if self.seq_len < 1:
            raise PolychipError(f"sequence length {self.seq_len} must be ≥ 1 token")
        if self.precision not in ("bf16", "fp16"):
            raise PolychipError(f"precision {self.precision!r} must be bf16 or fp16")

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TrainingJob:
        return TrainingJob(**data)
