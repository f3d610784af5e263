"""The memory half of `CostModel`: one device's peak memory for a stage (`memory.py`'s
terms), with a profile's measured activations and reserve where it has them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from polychip.costmodel import profiled
from polychip.costmodel.memory import (
    BlockActivations,
    EndActivations,
    MemoryBreakdown,
    block_activations,
    end_activations,
    in_flight_micro_batches,
    reserve_bytes,
    stage_memory,
    stage_params,
)
from polychip.plan.plan import Replica
from polychip.spec.accelerators import Accelerator

if TYPE_CHECKING:
    from polychip.costmodel.classes import ReplicaClasses
    from polychip.costmodel.estimate import CostModel


class StageMemory:
    """Mixed into `CostModel`: `memory_of`, `stage_memory_at`, `stage_memory` (the one entry
    the planner, the simulator and `evaluate` use) and `reserve_bytes`."""

    _activation_cache: dict[tuple, tuple[BlockActivations, EndActivations]]

    def memory_of(
        self: CostModel, replica: Replica, si: int, schedule: str, zero_shards: int,
        virtual_stages: int = 1,
    ) -> MemoryBreakdown:
        """Peak memory of one device of stage `si`, with the activations the schedule's
        closed form says it holds at its peak."""
        in_flight = in_flight_micro_batches(
            schedule, si, replica.num_stages, replica.num_micro_batches, virtual_stages
        )
        return self.stage_memory_at(replica, si, in_flight, zero_shards)

    def stage_memory_at(
        self: CostModel, replica: Replica, si: int, in_flight: int, zero_shards: int
    ) -> MemoryBreakdown:
        """Memory of one device of stage `si` holding `in_flight` micro-batches'
        activations (the simulator counts them as the schedule runs)."""
        st = replica.stages[si]
        return self.stage_memory(
            self.chip(st.chip), st.num_layers, st.tp, replica.micro_batch_size,
            first=si == 0, last=si == replica.num_stages - 1, in_flight=in_flight,
            recompute=st.recompute, zero_shards=zero_shards,
        )  # fmt: skip

    def stage_memory(
        self: CostModel,
        chip: Accelerator,
        num_layers: int,
        tp: int,
        micro_batch: int,
        *,
        first: bool,
        last: bool,
        in_flight: int,
        recompute: bool,
        zero_shards: int,
    ) -> MemoryBreakdown:
        """Peak memory of one device of a stage of `num_layers` blocks (memory.py): the one
        entry the planner and the simulator use."""
        block, ends, reserve = self._stage_inputs(chip, tp, micro_batch, first, last)
        return stage_memory(
            params=stage_params(self.model, num_layers, first, last) / tp,
            state=self.state_bytes, zero_shards=zero_shards, block=block,
            num_layers=num_layers, in_flight=in_flight, recompute=recompute, ends=ends,
            reserve=reserve,
        )  # fmt: skip

    def stage_memory_at_layers(self: CostModel, chip: Accelerator, tp: int, micro_batch: int,
                               *, first: bool, last: bool, recompute: bool
                               ) -> Callable[[int, int, int], MemoryBreakdown]:
        """`stage_memory` as a function of (layers, in flight, ZeRO shards) alone, the rest
        fixed: what the planner's memory caps call many times per stage context."""
        block, ends, reserve = self._stage_inputs(chip, tp, micro_batch, first, last)
        state, model = self.state_bytes, self.model

        def at(num_layers: int, in_flight: int, zero_shards: int) -> MemoryBreakdown:
            return stage_memory(
                params=stage_params(model, num_layers, first, last) / tp, state=state,
                zero_shards=zero_shards, block=block, num_layers=num_layers,
                in_flight=in_flight, recompute=recompute, ends=ends, reserve=reserve,
            )  # fmt: skip

        return at

    def _stage_inputs(self: CostModel, chip: Accelerator, tp: int, micro_batch: int,
                      first: bool, last: bool) -> tuple[BlockActivations, EndActivations, int]:
        """A stage's block activations, those of its ends (the embedding's if first, the
        head's and the loss's if last) and the framework reserve."""
        block, ends = self._activations(chip, tp, micro_batch)
        own = EndActivations(ends.first if first else 0.0, ends.last if last else 0.0,
                             ends.loss_transient if last else 0.0)
        return block, own, self.reserve_bytes(chip)

    def _activations(self: CostModel, chip: Accelerator, tp: int, micro_batch: int
                     ) -> tuple[BlockActivations, EndActivations]:
        """(one block's activations, the embedding's and head's): a profile's measured bytes
        kept where it has the point, else the analytic kernels' saved tensors."""
        key = (chip.name, tp, micro_batch)
        hit = self._activation_cache.get(key)
        if hit is None:
            block = block_activations(self.model, self.job, micro_batch, tp)
            measured = profiled.activation_bytes(self, chip.name, tp, micro_batch)
            if measured is not None:
                block = BlockActivations(saved_bytes=measured, input_bytes=block.input_bytes)
            ends = end_activations(self.model, self.job, micro_batch, tp)
            first, last = (profiled.end_bytes(self, chip.name, part, tp, micro_batch)
                           for part in ("embedding", "head"))
            ends = EndActivations(ends.first if first is None else first,
                                  ends.last if last is None else last, ends.loss_transient)
            hit = self._activation_cache[key] = (block, ends)
        return hit

    def reserve_bytes(self: CostModel, chip: Accelerator) -> int:
        """The framework reserve on `chip` (memory.RESERVE_*; the fixed part measured where
        a profile has `fixed_memory_bytes`)."""
        return reserve_bytes(chip.memory_bytes, profiled.fixed_memory_bytes(self, chip.name))

    def _memory(self: CostModel, classes: ReplicaClasses, schedule: str, zero_shards: int,
                virtual_stages: int
                ) -> tuple[dict[tuple[int, int], MemoryBreakdown], tuple[str, ...]]:
        """Every stage's device memory (once per class of identical replicas); what does not
        fit its chip."""
        reps = classes.representatives
        per_class = [[self.memory_of(r, si, schedule, zero_shards, virtual_stages)
                      for si in range(r.num_stages)] for r in reps]
        over = [[(si, mem, self.chip(st.chip).memory_bytes, st.chip)  # the same per class
                 for si, (st, mem) in enumerate(zip(r.stages, mems, strict=True))
                 if mem.total > self.chip(st.chip).memory_bytes]
                for r, mems in zip(reps, per_class, strict=True)]
        memory: dict[tuple[int, int], MemoryBreakdown] = {}
        violations: list[str] = []
        for ri, c in enumerate(classes.class_of):
            for si, mem in enumerate(per_class[c]):
                memory[(ri, si)] = mem
            violations += [f"replica {ri} stage {si} on {chip}: needs {mem.total / 2**30:.1f} "
                           f"GiB of {cap / 2**30:.0f} GiB" for si, mem, cap, chip in over[c]]
        return memory, tuple(violations)
