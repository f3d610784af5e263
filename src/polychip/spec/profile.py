"""A measured profile of one chip: input facts, like the catalog (docs/profile-format.md).

A profile holds what `polychip profile` measured on one chip type for one model shape, one
precision and one attention kernel: forward and backward seconds of one transformer block,
of the embedding and of the head + loss per (TP degree, micro-batch, sequence length), the
bytes each part keeps for its backward, the optimizer's seconds per parameter, the runtime's
host work per micro-batch and per step, collectives, point-to-point transfers and device <->
host copies by message size, the memory in use outside the job's tensors, and per-phase
`corrections` (factors `polychip calibrate` writes). Everything is in SI units (seconds,
bytes). A user can write one by hand; `spec.profile_file` reads and validates the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from polychip.spec.errors import SpecError
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

PROFILE_SCHEMA_VERSION = 1
PROFILE_KIND = "polychip-profile"
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter")
# Bus bytes per message byte (the nccl-tests convention): what each rank's link carries.
_BUS_FACTOR = {
    "all_reduce": lambda p: 2 * (p - 1) / p,
    "all_gather": lambda p: (p - 1) / p,
    "reduce_scatter": lambda p: (p - 1) / p,
}


@dataclass(frozen=True)
class PassPoint:
    """One forward and one backward of a part of the model (a transformer block, the
    embedding, or the final norm + head + loss) on one micro-batch of `micro_batch`
    sequences of `seq_len` tokens, on one chip holding its 1/`tp` share (TP collectives
    excluded: they are measured apart)."""

    tp: int
    micro_batch: int
    seq_len: int
    fwd_s: float
    bwd_s: float
    recompute_bwd_s: float | None = None  # block: backward with its forward recomputed
    activation_bytes: int | None = None  # bytes kept for the backward (parameters excluded)
    peak_bytes: int | None = None  # block: device allocator peak over fwd + bwd

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class CollectivePoint:
    """One collective of `message_bytes` (the whole tensor) among `group_size` chips."""

    op: str  # all_reduce, all_gather, reduce_scatter
    group_size: int
    message_bytes: int
    seconds: float

    @property
    def bus_bytes_per_s(self) -> float:
        """What each chip's link carried per second (nccl-tests' bus bandwidth)."""
        return _BUS_FACTOR[self.op](self.group_size) * self.message_bytes / self.seconds


@dataclass(frozen=True)
class TransferPoint:
    """One transfer of `message_bytes`: point to point between two chips of a node, or a
    copy device -> host (d2h) or host -> device (h2d)."""

    message_bytes: int
    seconds: float

    @property
    def bytes_per_s(self) -> float:
        return self.message_bytes / self.seconds


@dataclass(frozen=True)
class HostPoint:
    """The runtime's host work per micro-batch of `micro_batch` sequences of `seq_len` tokens,
    outside its timed phases (reading the micro-batch, Python between the actions): what a
    run's metrics count as `idle_s`."""

    micro_batch: int
    seq_len: int
    seconds: float

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class Corrections:
    """Factors on the cost model's phases for this chip (1.0: none), written by
    `polychip calibrate`: each the ratio measured / estimated of the phase it multiplies --
    compute (forward + backward), p2p (pipeline transfers), grad_sync (the data-parallel
    gradient sync), optimizer."""

    compute: float = 1.0
    p2p: float = 1.0
    grad_sync: float = 1.0
    optimizer: float = 1.0


@dataclass(frozen=True)
class ModelShape:
    """What fixes the cost of a block, the embedding and the head."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int
    mlp: str
    name: str = ""  # informative only

    @staticmethod
    def of(model: ModelSpec) -> ModelShape:
        return ModelShape(model.hidden_size, model.num_heads, model.num_kv_heads,
                          model.ffn_hidden_size, model.vocab_size, model.mlp, model.name)

    def differences(self, model: ModelSpec) -> list[tuple[str, object, object]]:
        """(key, the profile's value, the model's value) for every key that differs."""
        theirs = ModelShape.of(model)
        keys = ("hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size", "mlp")
        return [(k, getattr(self, k), getattr(theirs, k)) for k in keys
                if getattr(self, k) != getattr(theirs, k)]


@dataclass(frozen=True)
class Provenance:
    device: str  # the device's own name ("NVIDIA H200", the CPU model)
    device_type: str  # torch device type: cuda, npu, xpu, mlu, cpu
    torch_version: str
    date: str  # ISO 8601
    host: str
    polychip_version: str = ""
    warmup: int | None = None  # untimed runs before each measurement
    repeats: int | None = None  # timed runs; the median is kept
    memory_method: str = ""  # how activation bytes were measured
    notes: str = ""


@dataclass(frozen=True)
class Profile:
    chip: str  # the chip type's name as in the catalog or the cluster file
    model: ModelShape
    precision: str  # fp32, tf32, bf16, fp16
    attention: str  # fused, eager
    provenance: Provenance
    blocks: tuple[PassPoint, ...] = ()
    embedding: tuple[PassPoint, ...] = ()
    head: tuple[PassPoint, ...] = ()
    optimizer_s_per_param: float | None = None
    optimizer_num_params: int | None = None  # how many parameters the step was timed on
    optimizer_fixed_s: float | None = None  # seconds of a step whatever its size (None: 0)
    collectives: tuple[CollectivePoint, ...] = ()
    p2p: tuple[TransferPoint, ...] = ()
    d2h: tuple[TransferPoint, ...] = ()
    h2d: tuple[TransferPoint, ...] = ()
    host: tuple[HostPoint, ...] = ()  # the runtime's host work per micro-batch
    host_step_s: float | None = None  # ... and per step (zeroing gradients, completing sends)
    fixed_memory_bytes: int | None = None  # in use outside the job's tensors (context)
    corrections: Corrections = Corrections()
    file: str | None = field(default=None, compare=False)  # where it was read from

    def check_applies_to(self, model: ModelSpec, job: TrainingJob) -> None:
        """Raise SpecError (naming the file and the key) unless this profile was measured
        for `model`'s shape and `job`'s precision and attention kernel."""
        redo = (f"profile this model (`polychip profile --model {model.name} --precision "
                f"{job.precision}`) or leave this file out")
        for key, mine, theirs in self.model.differences(model):
            raise SpecError(f"{mine!r} but the job's model {model.name!r} has {theirs!r}: the "
                            f"profile measured another model shape; {redo}",
                            file=self.file, key=f"model.{key}")
        for key, mine, theirs in (("precision", self.precision, job.precision),
                                  ("attention", self.attention, job.attention)):
            if mine != theirs:
                raise SpecError(f"{mine!r} but the job runs {key} {theirs!r}; {redo}, or run "
                                f"the job with --{key} {mine}", file=self.file, key=key)
