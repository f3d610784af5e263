"""One stage's step: its program of the schedule (:func:`polychip.plan.build_schedule`),
executed action by action -- the same actions the simulator replays.

  F m     forward of micro-batch m (the first stage reads its tokens, the last computes the
          loss, scaled by b_r / (B * M)); its activations are held until B m
  B m     backward from the loss, or from the output gradient received for m; under a
          zero-bubble schedule (zb-h1) only the input gradient, and its activations are
          held until W m
  W m     zb-h1: the weight gradients of micro-batch m (:mod:`polychip.runtime.backward`)
  SA/SG   send activations / the input gradient (isend: never blocks); a send that the
          program follows by a receive from the same peer is posted with it
  RA/RG   wait for activations / the output gradient (the TP leader receives, then
          broadcasts to its TP group -- under sequence parallelism scatters each rank its
          part of the sequence; only the leader sends, the parts gathered on it first)
  AR[s]   all-reduce of segment s's gradient among the ranks that hold it (consecutive
          segments with the same holders are one collective)
  OPT     optimizer step; then every send of the step is completed

Under interleaved 1F1B a rank holds several model chunks (``F3.1``: micro-batch 3 on chunk
1); virtual stage c * S + p runs chunk c of stage p, the first virtual stage reads the tokens
and the last computes the loss (:func:`polychip.plan.schedule.chunk_layers`).

Each phase runs inside ``clock.phase(...)`` (:mod:`polychip.runtime.clock`): the executor says
what it does, the clock it was given decides what that costs. A plain run's
:class:`~polychip.runtime.clock.WallClock` only measures; ``--emulate`` injects an
:class:`~polychip.runtime.emulate.EmulatedClock`, whose slots make each phase last what the
cost model gives the emulated chip. The runner also counts what the stage held (micro-batches
whose activations are alive).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from polychip.plan.schedule import COMPUTE, RECVS, SENDS, Action, Op, StageProgram
from polychip.runtime.backward import Deferred, StageBackward
from polychip.runtime.clock import Phase, WallClock
from polychip.runtime.data import SampleStream
from polychip.runtime.data_parallel import StageGrads
from polychip.runtime.model import StageModule
from polychip.runtime.optim import StageOptimizer
from polychip.runtime.p2p import ACTIVATION, GRADIENT, P2P, PendingRecv, tag_of
from polychip.runtime.precision import LossScaler
from polychip.runtime.tensor_parallel import collect_to_leader, share_from_leader
from polychip.runtime.topology import RankRole

Failure = Callable[[int | None, str, BaseException], Exception]


@dataclass
class StepStats:
    peak_activations: int = 0  # most micro-batches whose activations were held at once
    local_loss: float | None = None  # this replica's loss x b_r / B (last stage only)


@dataclass
class _Held:
    inputs: torch.Tensor | None  # the stage input (None on the first stage)
    output: torch.Tensor  # the stage output, or the scaled loss on the last stage
    deferred: Deferred | None = None  # zero bubble: what W needs once B ran


Key = tuple[int, int]  # (micro-batch, chunk)


class StageRunner:
    """Executes ``program`` for one rank each step."""

    def __init__(self, *, program: StageProgram, model: StageModule, role: RankRole,
                 p2p: P2P, stream: SampleStream, grads: StageGrads,
                 optimizer: StageOptimizer, loss_scale: float,
                 activation_shape: tuple[int, ...], device: torch.device,
                 failure: Failure, clock: WallClock | None = None,
                 loss_scaler: LossScaler | None = None) -> None:
        self.program, self.model, self.role, self.p2p = program, model, role, p2p
        self.stream, self.grads, self.optimizer = stream, grads, optimizer
        self.loss_scale, self.shape = loss_scale, activation_shape
        self.device, self.failure = device, failure
        self.clock = clock or WallClock()
        self.loss_scaler = loss_scaler  # fp16: the loss multiplied by its scale for backward
        self.tp = model.tp
        b, s, *rest = activation_shape  # a TP rank's part of it under sequence parallelism
        self.local_shape = (b, self.tp.local_seq_len(s), *rest)
        self.dtype = next(model.parameters()).dtype
        self.num_chunks = len(model.chunks)
        self.num_virtual = role.num_stages * self.num_chunks
        # B and W apart (zero bubble): W, not B, produces the weight gradients
        self.split = any(a.op is Op.WEIGHT for a in program.actions)
        self.backward = StageBackward(model, self.split)
        self._grad_op = Op.WEIGHT if self.split else Op.BACKWARD
        # each chunk's last backward (W) of the step: its gradients are final as it
        # produces them, so their buckets may start (overlapped gradient sync)
        self._last_backward = {a.chunk: a.micro for a in program.actions
                               if a.op is self._grad_op}

    def _virtual(self, chunk: int) -> int:
        return chunk * self.role.num_stages + self.role.stage

    def _reads_tokens(self, chunk: int) -> bool:
        return self._virtual(chunk) == 0

    def _has_loss(self, chunk: int) -> bool:
        return self._virtual(chunk) == self.num_virtual - 1

    def _tag(self, a: Action) -> int:
        """Both ends name a message by its micro-batch, direction and the boundary between
        virtual stages it crosses (b: from virtual stage b to b + 1, or back)."""
        j = self._virtual(a.chunk)
        boundary = j if a.op in (Op.SEND_ACT, Op.RECV_GRAD) else j - 1
        kind = ACTIVATION if a.op in (Op.SEND_ACT, Op.RECV_ACT) else GRADIENT
        return tag_of(a.micro * self.num_virtual + boundary, kind)

    # ---- one step ------------------------------------------------------------------------
    def run(self, step: int) -> StepStats:
        """Execute the step's program (its clock's step is started and finished by the
        caller, who also zeroes the gradients)."""
        stats = StepStats()
        self._step, self._stats = step, stats
        self._held: dict[Key, _Held] = {}
        self._inputs: dict[Key, torch.Tensor] = {}
        self._out_grads: dict[Key, torch.Tensor] = {}
        self._in_grads: dict[Key, torch.Tensor] = {}
        self._posted: dict[tuple[Op, int, int], PendingRecv] = {}
        self._to_self: dict[int, torch.Tensor] = {}  # tag -> tensor (a one-stage pipeline)
        actions = self.program.actions
        self._backwards_left = sum(a.op is self._grad_op for a in actions)
        for i, action in enumerate(actions):
            following = actions[i + 1] if i + 1 < len(actions) else None
            try:
                self._execute(action, following)
            except RuntimeError as exc:
                communicating = action.op not in (*COMPUTE, Op.OPTIMIZER)
                if communicating or (self.tp.size > 1 and action.op is not Op.OPTIMIZER):
                    raise self.failure(step, f"{action} ({_WHAT[action.op]})", exc) from exc
                raise
        try:
            with self.clock.phase(Phase.PIPELINE_WAIT):  # the receivers take what we sent
                self.p2p.wait_sends()
        except RuntimeError as exc:
            raise self.failure(step, "completing the step's sends", exc) from exc
        assert not self._held and not self._posted, "the program left work behind"
        return stats

    def _execute(self, a: Action, following: Action | None) -> None:
        if a.op is Op.FORWARD:
            self._forward(a)
        elif a.op is Op.BACKWARD:
            self._backward(a)
        elif a.op is Op.WEIGHT:
            self._weight(a)
        elif a.op in SENDS:
            self._send(a, following)  # posting an isend: host work, not a phase
        elif a.op in RECVS:
            self._receive(a)
        elif a.op is Op.ALLREDUCE:
            run = self.grads.run_of(a.segment)  # a fused run is one collective, at its start
            with self.clock.phase(Phase.GRAD_SYNC, a, run):
                self.grads.reduce(a.segment)
        else:
            with self.clock.phase(Phase.OPTIMIZER, a):
                self.optimizer.step()

    def _forward(self, a: Action) -> None:
        m, c = a.micro, a.chunk
        reads, loss = self._reads_tokens(c), self._has_loss(c)
        if reads or loss:  # reading the data is host work, outside the compute phase
            tokens, targets = self.stream.batch_for(self._step, self.role.micro_batch(m))
        with self.clock.phase(Phase.COMPUTE, a):
            x = tokens.to(self.device) if reads else self._inputs.pop((m, c))
            out = self.model(x) if self.num_chunks == 1 else self.model(x, chunk=c)
            if loss:
                out = self.model.loss(out, targets.to(self.device)) * self.loss_scale
                self.grads.add_loss_(out)
        self._held[(m, c)] = _Held(None if reads else x, out)
        self._stats.peak_activations = max(self._stats.peak_activations, len(self._held))
        if loss:
            self._stats.local_loss = (self._stats.local_loss or 0.0) + float(out.detach().item())

    def _backward(self, a: Action) -> None:
        key = (a.micro, a.chunk)
        held = self._held[key] if self.split else self._held.pop(key)
        if not self.split:
            self._arm_if_last(a)
        with self.clock.phase(Phase.COMPUTE, a):
            if self._has_loss(a.chunk):
                scale = self.loss_scaler.scale if self.loss_scaler is not None else 1.0
                output, grad = (held.output * scale if scale != 1.0 else held.output), None
            else:
                output, grad = held.output, self._out_grads.pop(key)
            if self.split:
                held.deferred = self.backward.input_half(output, grad, held.inputs)
            else:
                self.backward.whole(output, grad)
                self._grads_done()
        if held.inputs is not None:
            assert held.inputs.grad is not None
            self._in_grads[key] = held.inputs.grad

    def _weight(self, a: Action) -> None:
        held = self._held.pop((a.micro, a.chunk))
        deferred = held.deferred
        assert deferred is not None, f"{a} before its B"
        self._arm_if_last(a)
        with self.clock.phase(Phase.COMPUTE, a):
            self.backward.weight_half(deferred)
            self._grads_done()

    def _arm_if_last(self, a: Action) -> None:
        """Before the chunk's last backward producing weight gradients (B, or W when split):
        its buckets may start as it produces them (overlapped sync)."""
        if self._last_backward[a.chunk] == a.micro:
            self.grads.arm(a.chunk)

    def _grads_done(self) -> None:
        self._backwards_left -= 1
        if self._backwards_left == 0:  # before any sync across replicas
            self.grads.finish_partial_()

    def _feeds_itself(self, a: Action) -> bool:
        """A one-stage interleaved pipeline sends to its own stage: every TP rank keeps its
        own tensor (its part of the sequence under sequence parallelism)."""
        return a.peer == self.role.stage_ranks[0]

    def _send(self, a: Action, following: Action | None) -> None:
        if a.op is Op.SEND_ACT:
            tensor = self._held[(a.micro, a.chunk)].output
        else:
            tensor = self._in_grads.pop((a.micro, a.chunk))
        if self._feeds_itself(a):
            self._to_self[self._tag(a)] = tensor.detach().clone()
            return
        whole = collect_to_leader(tensor, self.tp)  # only the leader sends
        if whole is None:
            return
        recv = None
        if following is not None and following.op in RECVS and following.peer == a.peer:
            recv = self._recv_spec(following)
        pending = self.p2p.start((whole, a.peer, self._tag(a)), recv)
        if recv is not None:
            assert pending is not None and following is not None
            self._posted[(following.op, following.micro, following.chunk)] = pending

    def _recv_spec(self, a: Action) -> tuple[tuple[int, ...], torch.dtype, int, int]:
        return self.shape, self.dtype, a.peer, self._tag(a)

    def _receive(self, a: Action) -> None:
        with self.clock.phase(Phase.PIPELINE_WAIT, a):
            tensor: torch.Tensor | None = None
            if self._feeds_itself(a):
                tensor = self._to_self.pop(self._tag(a))
            elif self.role.is_leader:
                pending = self._posted.pop((a.op, a.micro, a.chunk), None)
                if pending is None:
                    pending = self.p2p.start(None, self._recv_spec(a))
                    assert pending is not None
                tensor, sent_at = pending.wait()
                self.clock.delivered(a, sent_at)
            if not self._feeds_itself(a):
                tensor = share_from_leader(tensor, self.tp, self.shape, self.dtype, self.device)
            assert tensor is not None
        if a.op is Op.RECV_ACT:
            self._inputs[(a.micro, a.chunk)] = tensor.requires_grad_()
        else:
            self._out_grads[(a.micro, a.chunk)] = tensor

    # ---- warm-up: how fast is this host? ---------------------------------------------------
    def compute_pass(self) -> None:
        """One pass over this stage's micro-batches, unpadded: forward and backward (B and W
        when split) of each chunk, with made-up stage inputs and output gradients (no data
        moves between stages). Accumulates into the gradients."""
        for m in range(self.role.num_micro_batches):
            tokens, targets = self.stream.batch_for(0, self.role.micro_batch(m))
            for c in range(self.num_chunks):
                x = None if self._reads_tokens(c) else torch.randn(
                    self.local_shape, dtype=self.dtype, device=self.device, requires_grad=True)
                out = self.model(tokens.to(self.device) if x is None else x, chunk=c)
                if self._has_loss(c):
                    self.backward.both(self.model.loss(out, targets.to(self.device)), None, x)
                else:
                    self.backward.both(out, torch.randn_like(out), x)


_WHAT = {Op.SEND_ACT: "sending activations", Op.SEND_GRAD: "sending a gradient",
         Op.RECV_ACT: "receiving activations", Op.RECV_GRAD: "receiving a gradient",
         Op.ALLREDUCE: "the gradient all-reduce", Op.FORWARD: "a tensor-parallel forward",
         Op.BACKWARD: "a tensor-parallel backward",
         Op.WEIGHT: "a tensor-parallel weight gradient"}
