"""The optimizer of one rank: AdamW (or SGD) over the parameters it steps
(:func:`polychip.runtime.shards.owned_spans`: all it holds, or its ZeRO-1 shard), on master
weights in the optimizer's dtype (:mod:`polychip.runtime.precision`).

Each owned span of the flat buffers is one tensor to the torch optimizer: under mixed
precision an fp32 copy of the weights (the master), otherwise a view of the weights
themselves. AdamW and SGD are element-wise, so stepping flat spans is exactly stepping the
parameters one by one. A step: the spans' gradients (the reduce dtype's buffer, cast if the
master's dtype differs; under fp16 unscaled and checked for inf/NaN on every rank, the step
skipped everywhere if one has any), the torch optimizer's step, the masters written back to
the 16-bit weights, and under ZeRO-1 the updated parameters all-gathered.

Weight decay applies to matrices only: the spans are cut where the parameter kind changes and
go to two parameter groups (:mod:`polychip.runtime.param_groups`). With a ``clip_grad_norm``
the gradients are clipped to the global norm over all ranks before the step, after fp16's
unscaling (:mod:`polychip.runtime.grad_clip`); the learning rate of each step is set by the
trainer (:meth:`StageOptimizer.set_lr`, from :mod:`polychip.runtime.lr_schedule`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
import torch.distributed as dist

from polychip.runtime.data_parallel import StageGrads
from polychip.runtime.grad_clip import GradClipper, norm_ranges
from polychip.runtime.param_groups import groups_of, split_by_decay
from polychip.runtime.precision import LossScaler, Precision
from polychip.runtime.shards import (
    gather_flat,
    gather_params,
    owned_spans,
    span_of,
    span_tensor,
    stage_params,
)


class OptimizerConfig(Protocol):
    optimizer: Literal["adamw", "sgd"]
    lr: float
    weight_decay: float
    clip_grad_norm: float | None


def make_optimizer(config: OptimizerConfig, params: Sequence[torch.Tensor] | Sequence[dict]
                   ) -> torch.optim.Optimizer:
    """``params``: tensors (all decayed) or parameter groups (:func:`groups_of`); SGD has no
    weight decay."""
    tensors = [p for g in params for p in g["params"]] if isinstance(params[0], dict) else params
    if config.optimizer == "sgd":
        return torch.optim.SGD(tensors, lr=config.lr, momentum=0.9)
    fused = tensors[0].device.type in ("cpu", "cuda")  # one fused kernel (fast on the CPU too)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             fused=fused or None)


class StageOptimizer:
    """``step()`` is the schedule's ``OPT``: after every ``AR[...]`` of the step."""

    def __init__(self, grads: StageGrads, config: OptimizerConfig, precision: Precision,
                 scaler: LossScaler | None = None, *, replica: int = 0,
                 norm_skip: frozenset[str] = frozenset()) -> None:
        """``replica``: this rank's (the global norm's ownership); ``norm_skip``: parameters
        whose gradient is another's copy (a tied embedding's head on a later stage)."""
        self.grads, self.precision, self.scaler = grads, precision, scaler
        kinds = split_by_decay(grads, owned_spans(grads))
        self.spans = [span for span, _ in kinds]
        if grads.zero1:
            stage_params(grads)
        source = "initial" if grads.initial is not None else "param"
        self.copies = precision.master is not None or any(s.staged for s in self.spans)
        self.masters: list[torch.nn.Parameter] = []
        for span in self.spans:
            weights = span_tensor(grads, span, source).detach()
            if self.copies:
                weights = weights.to(precision.optimizer_dtype, copy=True)
            self.masters.append(torch.nn.Parameter(weights))
        grads.initial = None  # the masters hold them now
        decay = [d for _, d in kinds]
        self.inner = make_optimizer(config, groups_of(zip(self.masters, decay, strict=True),
                                                      config.weight_decay))
        self.clipper = None if not config.clip_grad_norm else GradClipper(
            config.clip_grad_norm, norm_ranges(grads, self.spans, replica=replica,
                                               tp_rank=grads.tp.rank, skip=norm_skip))
        self.grad_norm: float | None = None  # the last step's, before clipping

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next step (every rank sets the same)."""
        for group in self.inner.param_groups:
            group["lr"] = lr

    def step(self) -> bool:
        """One optimizer step; False when fp16's loss scaling found an inf or a NaN and every
        rank skipped it."""
        grads = self.grads
        if grads.zero1:
            stage_params(grads)
        for span, master in zip(self.spans, self.masters, strict=True):
            g = span_tensor(grads, span, "grad")
            master.grad = g if g.dtype == master.dtype else g.to(master.dtype)
        self.grad_norm = None
        if self.scaler is not None and not self._unscale_and_check():
            self._drop_grads()
            return False
        if self.clipper is not None:
            self.grad_norm = self.clipper.clip_([m.grad for m in self.masters])
        self.inner.step()
        if self.copies:
            with torch.no_grad():
                for span, master in zip(self.spans, self.masters, strict=True):
                    span_tensor(grads, span, "param").copy_(master)
        if grads.zero1:
            gather_params(grads)
        self._drop_grads()
        return True

    def _unscale_and_check(self) -> bool:
        assert self.scaler is not None
        inv = 1.0 / self.scaler.scale
        bad = torch.zeros((), dtype=torch.float32)
        for master in self.masters:
            assert master.grad is not None
            master.grad.mul_(inv)
            bad = torch.maximum(bad, (~torch.isfinite(master.grad)).any().float().cpu())
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every rank skips, or none
        found = bool(bad.item())
        self.scaler.update(found)
        return not found

    def _drop_grads(self) -> None:
        for master in self.masters:
            master.grad = None

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the optimizer holds: its masters (views of the weights when they are
        not copies) and its per-parameter state (AdamW's m, v and step)."""
        state = [v for s in self.inner.state.values() for v in s.values() if torch.is_tensor(v)]
        return [*self.masters, *state]

    def state_bytes(self) -> int:
        """Bytes of the optimizer's own state: the masters when they are copies, and every
        per-element state tensor (AdamW's m and v, SGD's momentum)."""
        total = sum(m.numel() * m.element_size() for m in self.masters) if self.copies else 0
        for master in self.masters:
            for value in self.inner.state.get(master, {}).values():
                if torch.is_tensor(value) and value.numel() == master.numel():
                    total += value.numel() * value.element_size()
        return total

    # ---- checkpoints (runtime.checkpoint) ---------------------------------------------------
    def state_keys(self) -> tuple[str, ...]:
        """The optimizer's per-element state, by name."""
        return ("momentum_buffer",) if isinstance(self.inner, torch.optim.SGD) else (
            "exp_avg", "exp_avg_sq")

    def step_count(self) -> int:
        """Optimizer steps taken (AdamW's bias correction counts them; SGD: 0)."""
        state = self.inner.state.get(self.masters[0], {}) if self.masters else {}
        return int(state["step"]) if "step" in state else 0

    def full_state(self) -> dict[str, torch.Tensor]:
        """Collective under ZeRO-1: the master weights (``param``) and every per-element
        state, each laid out like the buffers and whole on every holder, whatever its shard."""
        dtype = self.precision.optimizer_dtype
        spans, masters = self.spans, self.masters
        out = {"param": gather_flat(self.grads, spans, [m.detach() for m in masters], dtype)}
        for key in self.state_keys():
            parts = [self.inner.state.get(m, {}).get(key, torch.zeros_like(m)) for m in masters]
            out[key] = gather_flat(self.grads, spans, parts, dtype)
        return out

    @torch.no_grad()
    def load_full_state(self, flats: dict[str, torch.Tensor], step_count: int) -> None:
        """The reverse of :meth:`full_state`: weights, masters and state from tensors laid out
        like the buffers, ``step_count`` steps taken."""
        self.grads.param_buffer.copy_(flats["param"])
        if self.copies:
            for span, master in zip(self.spans, self.masters, strict=True):
                master.copy_(span_of(self.grads, span, flats["param"]))
        keys = self.state_keys()
        if step_count == 0 and keys != ("momentum_buffer",):
            return  # AdamW before its first step holds no state
        index = {id(p): i for i, p in enumerate(  # state_dict's numbering: group by group
            p for group in self.inner.param_groups for p in group["params"])}
        state = {}
        for span, master in zip(self.spans, self.masters, strict=True):
            values = {k: span_of(self.grads, span, flats[k]).clone() for k in keys}
            state[index[id(master)]] = values | (
                {} if "momentum_buffer" in keys else {"step": torch.tensor(float(step_count))})
        self.inner.load_state_dict({"state": state,
                                    "param_groups": self.inner.state_dict()["param_groups"]})
