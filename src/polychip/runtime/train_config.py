"""What a run is told: :class:`TrainConfig`, checked once when built (the CLI's options, the
tests' and benchmarks' settings), read by :mod:`polychip.runtime.train` and
:mod:`polychip.runtime.session`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from polychip.runtime.data import DEFAULT_CORPUS_MAX_BYTES
from polychip.runtime.data_parallel import DEFAULT_BUCKET_BYTES
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.lr_schedule import LRKind, LRSchedule
from polychip.runtime.precision import DTYPES


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20
    emulate: bool = False
    dilation: float | None = None  # emulated clocks: None -> chosen by a timed warm-up
    data: str | None = None  # None: the Python standard library's sources
    seed: int = 0
    # None: the plan's job.precision (mixed precision: runtime.precision); a dtype: the model,
    # gradients, reduction and optimizer all in it (float64 for exactness tests)
    dtype: Literal["float32", "float64", "bfloat16"] | None = None
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1  # matrices only (runtime.param_groups)
    lr_schedule: LRKind = "constant"  # warm-up, then constant / cosine / linear decay
    warmup_steps: int = 0
    min_lr: float | None = None  # the decay's floor; None: lr / 10
    lr_decay_steps: int | None = None  # the decay ends here; None: at `steps`
    clip_grad_norm: float | None = None  # the global gradient norm's cap; None: no clipping
    tokenizer: str | None = None  # a tokenizers' tokenizer.json for a text `data` file
    timeout_s: float = 120.0  # process-group timeout: a silent rank fails the run after this
    max_corpus_bytes: int = DEFAULT_CORPUS_MAX_BYTES
    metrics_path: str | None = None
    progress: bool = False  # a progress bar on rank 0
    bucket_bytes: int = DEFAULT_BUCKET_BYTES  # gradient buckets (the plan's job says overlap)
    init_from: str | None = None  # a Hugging Face model directory: the initial weights
    export_hf: str | None = None  # write the trained model there in Hugging Face form
    checkpoint_dir: str | None = None  # runtime.checkpoint: saves under global names
    save_every: int = 0  # steps between saves (0: only at the end, or when stopped)
    keep: int = 0  # newest complete saves kept (0: all)
    resume: bool = False  # from the newest complete save in checkpoint_dir (steps: the total)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise RuntimeSetupError(f"steps={self.steps}: train at least 1 step")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise RuntimeSetupError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.bucket_bytes < 1:
            raise RuntimeSetupError(f"bucket_bytes={self.bucket_bytes}: give at least 1 byte")
        if self.save_every < 0 or self.keep < 0:
            raise RuntimeSetupError(f"save_every={self.save_every}, keep={self.keep}: both "
                                    f"must be >= 0 (0: only at the end / keep every save)")
        if (self.resume or self.save_every) and not self.checkpoint_dir:
            raise RuntimeSetupError("--resume and --save-every need --checkpoint-dir DIR")
        if self.optimizer not in ("adamw", "sgd"):
            raise RuntimeSetupError(f"optimizer={self.optimizer!r}: choose adamw or sgd")
        if self.dilation is not None and not (self.emulate and self.dilation > 0):
            raise RuntimeSetupError(
                f"dilation={self.dilation}: a dilation needs emulated chips (--emulate) and "
                f"must be > 0; leave it out to choose it from a warm-up")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise RuntimeSetupError(f"clip_grad_norm={self.clip_grad_norm}: give a norm > 0, "
                                    f"or leave it out for no clipping")
        self.lr_schedule_of()  # its own checks

    def lr_schedule_of(self) -> LRSchedule:
        return LRSchedule.of(self.lr_schedule, self.lr, min_lr=self.min_lr,
                             warmup_steps=self.warmup_steps,
                             decay_steps=self.lr_decay_steps or self.steps)

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=self.timeout_s)
