"""Measured peak memory of one rank's step.

- On a device with an allocator (``cuda``, ``npu``, ``xpu``, ...): the allocator's peak of
  allocated bytes, its statistics reset at the start of each step (``device-allocator``).
- On the CPU, where no allocator keeps statistics and the process's resident size mixes the
  interpreter, the libraries and freed pages, the tensors the step holds are counted
  (``cpu-tensors``): parameters + gradients + optimizer state + the peak of the activations
  autograd saves for backward, each storage counted once (views and tensors saved by several
  operations share it). Activations are counted with
  ``torch.autograd.graph.saved_tensors_hooks`` as the forward passes save them, and released
  when backward frees them; a parameter saved by an operation is not an activation. Under
  activation recompute only a block's inputs are saved; its recomputed activations live
  inside one block's backward and are not counted. Not counted: stage outputs waiting to be
  sent and transient buffers (a backward's own temporaries, the optimizer's).

The activations' peak falls before the optimizer step; the optimizer state present then is
the state before the step (none on the first step), so the step's peak is parameters +
gradients + max(state before + activations' peak, state after).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from polychip.runtime.data_parallel import StageGrads
    from polychip.runtime.optim import StageOptimizer

Key = int  # a storage, by its address (a meter counts the tensors of one device)


@dataclass(frozen=True)
class MemoryCount:
    """The tensors a CPU rank held in its step, by kind (bytes)."""

    parameters_bytes: int
    gradients_bytes: int
    optimizer_bytes: int  # state (and master weights kept by the optimizer) after the step
    activations_bytes: int  # saved for backward, at their peak


def storage_key(t: torch.Tensor) -> Key:
    """The address of ``t``'s storage (a view shares its base's), without building the
    storage object: this runs for every tensor a forward saves."""
    return t.data_ptr() - t.storage_offset() * t.element_size()


def storage_bytes(tensors: Iterable[torch.Tensor], seen: set[Key]) -> int:
    """Bytes of the storages of ``tensors`` not in ``seen`` (each once); adds them to it."""
    total = 0
    for t in tensors:
        key = storage_key(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class _Saved:
    """What autograd keeps for a saved activation: the tensor, released with this handle."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, tensor: torch.Tensor, key: Key, meter: SavedTensors) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        self.meter.release(self.key)


class SavedTensors:
    """Bytes of the activations autograd holds for backward (saved under :meth:`watch`),
    alive at once; ``peak_bytes`` since :meth:`reset_peak`. Storages in ``exclude`` (the
    parameters) are not activations."""

    def __init__(self) -> None:
        self.exclude: set[Key] = set()
        self.current_bytes = self.peak_bytes = 0
        self._refs: dict[Key, list[int]] = {}  # storage -> [handles alive, bytes]

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes

    @contextmanager
    def watch(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield

    def _pack(self, t: torch.Tensor) -> object:
        key = storage_key(t)
        if key in self.exclude:
            return t
        ref = self._refs.get(key)
        if ref is None:
            ref = self._refs[key] = [0, t.untyped_storage().nbytes()]
            self.current_bytes += ref[1]
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        ref[0] += 1
        return _Saved(t, key, self)

    @staticmethod
    def _unpack(handle: object) -> torch.Tensor:
        return handle.tensor if isinstance(handle, _Saved) else handle  # type: ignore[return-value]

    def release(self, key: Key) -> None:
        ref = self._refs[key]
        ref[0] -= 1
        if ref[0] == 0:
            self.current_bytes -= ref[1]
            del self._refs[key]


class TensorMeter:
    """Counts the tensors a CPU rank holds (module docstring)."""

    kind = "cpu-tensors"

    def __init__(self, model: torch.nn.Module, grads: StageGrads,
                 optimizer: StageOptimizer) -> None:
        self.model, self.grads, self.optimizer = model, grads, optimizer
        self.saved = SavedTensors()
        self._state_before = 0
        self._count: MemoryCount | None = None

    def _params_grads_state(self) -> tuple[int, int, int, set[Key]]:
        seen: set[Key] = set()
        params = list(self.model.parameters())
        param_bytes = storage_bytes(params, seen)
        excluded = set(seen)
        # the gradient buffer (fp32 under mixed precision: no .grad points into it between
        # micro-batches), and any 16-bit .grad alive
        grads = [self.grads.buffer, *(p.grad for p in params if p.grad is not None)]
        grad_bytes = storage_bytes(grads, seen)
        state_bytes = storage_bytes(self.optimizer.state_tensors(), seen)
        return param_bytes, grad_bytes, state_bytes, excluded | seen

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around one step's program: counts what it holds."""
        _, _, self._state_before, exclude = self._params_grads_state()
        self.saved.exclude = exclude
        self.saved.reset_peak()
        with self.saved.watch():
            yield
        params, grads, state, _ = self._params_grads_state()
        self._count = MemoryCount(params, grads, state, self.saved.peak_bytes)

    def peak(self) -> tuple[int, MemoryCount | None]:
        c = self._count
        assert c is not None, "peak() after a step"
        held = max(self._state_before + c.activations_bytes, c.optimizer_bytes)
        return c.parameters_bytes + c.gradients_bytes + held, c


class AllocatorMeter:
    """The device allocator's peak of allocated bytes, per step."""

    kind = "device-allocator"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @contextmanager
    def step(self) -> Iterator[None]:
        torch.accelerator.reset_peak_memory_stats(self.device)
        yield

    def peak(self) -> tuple[int, MemoryCount | None]:
        return int(torch.accelerator.max_memory_allocated(self.device)), None


def memory_meter(device: torch.device, model: torch.nn.Module, grads: StageGrads,
                 optimizer: StageOptimizer) -> TensorMeter | AllocatorMeter:
    if device.type == "cpu":
        return TensorMeter(model, grads, optimizer)
    return AllocatorMeter(device)
