"""`polychip profile`: measure the chip this process runs on with the runtime's own code.

One transformer block (`runtime.layers.DecoderLayer`, built and initialised as a stage of
the runtime builds it), the embedding and the final norm + head + loss (`runtime.model`
stages holding no block) are timed forward and backward over a grid of TP degrees,
micro-batch sizes and sequence lengths. A TP shard shape is timed on one device: the part
is built at degree t with its collectives replaced by no-ops (:class:`NoCollectives`);
the collectives are measured apart (:mod:`polychip.runtime.profile_comm`). On the CPU the
parts run as every CPU rank of `polychip train` runs them: with the runtime's CPU memory
meter watching the tensors autograd saves (:class:`polychip.runtime.memory.SavedTensors`),
whose hooks cost time at small micro-batches. How a figure is timed:
:mod:`polychip.runtime.profile_timing`; the runtime's host work per micro-batch:
:mod:`polychip.runtime.profile_host`. The whole run, from a request to a
`Profile`: :mod:`polychip.runtime.profile_run`. docs/profile-format.md describes the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from polychip.runtime.memory import SavedTensors
from polychip.runtime.model import build_stage, loss_fn
from polychip.runtime.profile_timing import (
    Timing,
    cache_flusher,
    peak_bytes,
    saved_bytes,
    time_call,
    time_passes,
)
from polychip.runtime.tensor_parallel import TensorParallel
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec
from polychip.spec.profile import PassPoint

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
          "fp16": torch.float16}
Tick = Callable[[str], None]  # called once per measurement, with what was measured


@dataclass(frozen=True)
class NoCollectives(TensorParallel):
    """A TP rank whose collectives do nothing: one device times its 1/size share of a part
    alone (the collectives are measured apart). Sequence and vocabulary parallelism are off
    here, so a block's only collective is `all_reduce_`; a test runs a shard's forward and
    backward with no process group, which fails if any other collective is reached."""

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


class PartProfiler:
    """Times the parts of one model on one device in one precision."""

    def __init__(self, model: ModelSpec, device: torch.device, precision: str,
                 timing: Timing, tick: Tick) -> None:
        self.spec = model
        self.device, self.dtype, self.timing, self.tick = device, DTYPES[precision], timing, tick
        self.precision = precision
        self.generator = torch.Generator(device="cpu").manual_seed(0)

    @contextmanager
    def _as_run(self) -> Iterator[None]:
        """A part's forward as a rank of `polychip train` runs it: on the CPU under the
        runtime's memory meter (`runtime.memory.TensorMeter` counts the saved tensors through
        these hooks on every CPU rank), elsewhere as it is."""
        with SavedTensors().watch() if self.device.type == "cpu" else nullcontext():
            yield

    def _random(self, *shape: int) -> torch.Tensor:
        x = torch.randn(*shape, generator=self.generator) * 0.1
        return x.to(device=self.device, dtype=self.dtype)

    def _stage(self, tp: int, blocks: int, embedding: bool, head: bool):
        last = self.spec.num_layers
        start = 0 if embedding else last - blocks
        return build_stage(self.spec, start, start + blocks, device=self.device,
                           dtype=self.dtype, has_embedding=embedding, has_head=head,
                           tp=NoCollectives(size=tp))

    def block(self, tp: int, micro_batch: int, seq_len: int) -> PassPoint:
        from polychip.runtime.layers import rotary_cos_sin

        stage = self._stage(tp, 1, False, False)
        layer = next(iter(stage.layers.values()))
        x = self._random(micro_batch, seq_len, self.spec.hidden_size).requires_grad_()
        grad = self._random(micro_batch, seq_len, self.spec.hidden_size)
        cos, sin = rotary_cos_sin(seq_len, self.spec.head_dim, x)
        where = f"block tp {tp} micro-batch {micro_batch} x {seq_len}"

        def fwd() -> torch.Tensor:
            with self._as_run():
                return layer(x, cos, sin)

        def rec() -> torch.Tensor:
            with self._as_run():
                return checkpoint(layer, x, cos, sin, use_reentrant=False)

        def bwd(out: torch.Tensor) -> None:
            out.backward(grad)

        fwd_s, bwd_s = time_passes(fwd, bwd, self.device, self.timing)
        _, rec_s = time_passes(rec, bwd, self.device, self.timing)
        # a stage computes the rotary cos / sin once for all its blocks: not the block's
        shared = [*layer.parameters(), cos, sin]
        point = PassPoint(tp, micro_batch, seq_len, fwd_s, bwd_s, recompute_bwd_s=rec_s,
                          activation_bytes=saved_bytes(lambda: layer(x, cos, sin), shared),
                          peak_bytes=peak_bytes(fwd, bwd, self.device))
        self.tick(where)
        return point

    def embedding(self, tp: int, micro_batch: int, seq_len: int) -> PassPoint:
        stage = self._stage(tp, 0, True, False)
        tokens = torch.randint(0, self.spec.vocab_size, (micro_batch, seq_len),
                               generator=self.generator).to(self.device)
        grad = self._random(micro_batch, seq_len, self.spec.hidden_size)

        def fwd() -> torch.Tensor:
            with self._as_run():
                return stage(tokens)

        fwd_s, bwd_s = time_passes(fwd, lambda out: out.backward(grad), self.device,
                                   self.timing)
        self.tick(f"embedding tp {tp} micro-batch {micro_batch} x {seq_len}")
        return PassPoint(tp, micro_batch, seq_len, fwd_s, bwd_s,
                         activation_bytes=saved_bytes(lambda: stage(tokens),
                                                      list(stage.parameters())))

    def head(self, tp: int, micro_batch: int, seq_len: int) -> PassPoint:
        stage = self._stage(tp, 0, False, True)
        x = self._random(micro_batch, seq_len, self.spec.hidden_size).requires_grad_()
        targets = torch.randint(0, self.spec.vocab_size, (micro_batch, seq_len),
                                generator=self.generator).to(self.device)
        def fwd() -> torch.Tensor:
            with self._as_run():
                return loss_fn(stage(x), targets)

        fwd_s, bwd_s = time_passes(fwd, lambda loss: loss.backward(), self.device, self.timing)
        self.tick(f"head + loss tp {tp} micro-batch {micro_batch} x {seq_len}")
        return PassPoint(tp, micro_batch, seq_len, fwd_s, bwd_s,
                         activation_bytes=saved_bytes(lambda: loss_fn(stage(x), targets),
                                                      list(stage.parameters())))

    def optimizer(self, min_params: int, max_params: int) -> tuple[float, float, int]:
        """(seconds per parameter, fixed seconds per step, parameters timed): the runtime's
        own optimizer step (:class:`~polychip.runtime.optim.StageOptimizer` over a stage's
        flat buffers, in the job's dtypes: master copies, casts, AdamW) over one block and
        over enough blocks for at least `min_params`; the line through the two."""
        per_block = self.spec.layer_params
        wanted = max(2, min(-(-min_params // per_block), max_params // per_block))
        big = min(wanted, self.spec.num_layers)  # a stage holds at most the model's blocks
        p2, t2 = self._optimizer_step(big)
        if big < 2:  # one size only: no fixed part to tell apart
            self.tick(f"optimizer step over {p2:,} parameters")
            return t2 / p2, 0.0, p2
        p1, t1 = self._optimizer_step(1)
        per_param = max((t2 - t1) / (p2 - p1), 0.0) or t2 / p2
        self.tick(f"optimizer steps over {p1:,} and {p2:,} parameters")
        return per_param, max(t1 - per_param * p1, 0.0), p2

    def _optimizer_step(self, blocks: int) -> tuple[int, float]:
        from polychip.runtime.data_parallel import StageGrads
        from polychip.runtime.optim import StageOptimizer
        from polychip.runtime.precision import precision_of
        from polychip.runtime.train import TrainConfig

        precision = precision_of(TrainingJob(1, 1, precision=self.precision))
        stage = build_stage(self.spec, 0, blocks, device=self.device,
                            dtype=precision.optimizer_dtype, has_embedding=False,
                            has_head=False)
        grads = StageGrads(stage, [], [], {}, has_loss=False, tp_size=1,
                           param_dtype=precision.compute, grad_dtype=precision.grad)
        grads.buffer.fill_(1e-3)
        opt = StageOptimizer(grads, TrainConfig(), precision)
        params = sum(p.numel() for p in stage.parameters())
        # in a step the optimizer follows the backward, which evicted its state: time it cold
        flush = cache_flusher(self.device)
        return params, time_call(opt.step, self.device, self.timing, before=flush)


def parts_grid(tps: tuple[int, ...], micro_batches: tuple[int, ...],
               seq_lens: tuple[int, ...]) -> list[tuple[int, int, int]]:
    return [(t, b, s) for t in tps for s in seq_lens for b in micro_batches]


def measure_parts(profiler: PartProfiler, grid: list[tuple[int, int, int]]
                  ) -> dict[str, tuple[PassPoint, ...]]:
    """Every part at every point of the grid, in the profiler's precision."""
    out: dict[str, list[PassPoint]] = {"blocks": [], "embedding": [], "head": []}
    for t, b, s in grid:
        out["blocks"].append(profiler.block(t, b, s))
        out["embedding"].append(profiler.embedding(t, b, s))
        out["head"].append(profiler.head(t, b, s))
    return {k: tuple(v) for k, v in out.items()}

