"""One stage's step: its program of the schedule (:func:`polychip.plan.build_schedule`),
executed action by action -- the same actions the simulator replays.

  F m     forward of micro-batch m (the first stage reads its tokens, the last computes the
          loss, scaled by b_r / (B * M)); its activations are held until B m
  B m     backward from the loss, or from the output gradient received for m
  SA/SG   send activations / the input gradient (isend: never blocks); a send that the
          program follows by a receive from the same peer is posted with it
  RA/RG   wait for activations / the output gradient (the TP leader receives, then
          broadcasts to its TP group; only the leader sends)
  AR[s]   all-reduce of segment s's gradient among the ranks that hold it (consecutive
          segments with the same holders are one collective)
  OPT     optimizer step; then every send of the step is completed

Under interleaved 1F1B a rank holds several model chunks (``F3.1``: micro-batch 3 on chunk
1); virtual stage c * S + p runs chunk c of stage p, the first virtual stage reads the tokens
and the last computes the loss (:func:`polychip.plan.schedule.chunk_layers`).

With emulated chips every F, B and OPT lasts ``dilation x`` the cost model's time for this
stage, every received message arrives ``dilation x`` its modelled transfer time after it was
sent, and every all-reduce is followed by ``dilation x`` its modelled time (the host's own
collectives are nearly free in chip time). The runner counts what the stage held (micro-batches
whose activations are alive), and splits its time into compute, receive waits and gradient sync.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from polychip.plan.schedule import RECVS, SENDS, Action, Op, StageProgram
from polychip.runtime.data import SampleStream
from polychip.runtime.data_parallel import StageGrads
from polychip.runtime.emulate import PhaseClock, PhaseTargets, sleep_until
from polychip.runtime.model import StageModule, loss_fn
from polychip.runtime.optim import StageOptimizer
from polychip.runtime.p2p import ACTIVATION, GRADIENT, P2P, PendingRecv, tag_of
from polychip.runtime.precision import LossScaler
from polychip.runtime.tensor_parallel import broadcast_from_leader
from polychip.runtime.topology import RankRole

GRADIENT_SYNC = "gradient_sync"
"""The emulated pause after a real all-reduce (a communication slot, not a compute phase)."""
Failure = Callable[[int | None, str, BaseException], Exception]


@dataclass
class StepStats:
    compute_s: float = 0.0  # F, B and OPT (padded when emulated)
    recv_wait_s: float = 0.0  # RA, RG: waiting for data (the emulated transfer included)
    sync_s: float = 0.0  # AR: the all-reduces with their emulated slots
    peak_activations: int = 0  # most micro-batches whose activations were held at once
    local_loss: float | None = None  # this replica's loss x b_r / B (last stage only)


@dataclass
class _Held:
    inputs: torch.Tensor | None  # the stage input (None on the first stage)
    output: torch.Tensor  # the stage output, or the scaled loss on the last stage


Key = tuple[int, int]  # (micro-batch, chunk)


class StageRunner:
    """Executes ``program`` for one rank each step."""

    def __init__(self, *, program: StageProgram, model: StageModule, role: RankRole,
                 p2p: P2P, stream: SampleStream, grads: StageGrads,
                 optimizer: StageOptimizer, loss_scale: float,
                 activation_shape: tuple[int, ...], targets: PhaseTargets | None,
                 device: torch.device, failure: Failure,
                 loss_scaler: LossScaler | None = None) -> None:
        self.program, self.model, self.role, self.p2p = program, model, role, p2p
        self.stream, self.grads, self.optimizer = stream, grads, optimizer
        self.loss_scale, self.shape, self.targets = loss_scale, activation_shape, targets
        self.device, self.failure = device, failure
        self.loss_scaler = loss_scaler  # fp16: the loss multiplied by its scale for backward
        self.tp = model.tp
        self.dtype = next(model.parameters()).dtype
        self.num_chunks = len(model.chunks)
        self.num_virtual = role.num_stages * self.num_chunks
        self.clock = PhaseClock(None)
        # each chunk's last backward of the step: its gradients are final as it produces
        # them, so their buckets may start (overlapped gradient sync)
        self._last_backward = {a.chunk: a.micro for a in program.actions
                               if a.op is Op.BACKWARD}

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
        stats = StepStats()
        self._step, self._stats = step, stats
        self._held: dict[Key, _Held] = {}
        self._inputs: dict[Key, torch.Tensor] = {}
        self._out_grads: dict[Key, torch.Tensor] = {}
        self._in_grads: dict[Key, torch.Tensor] = {}
        self._posted: dict[tuple[Op, int, int], PendingRecv] = {}
        self._to_self: dict[int, torch.Tensor] = {}  # tag -> tensor (a one-stage pipeline)
        self._chain = False  # whether the next compute phase follows the last one directly
        actions = self.program.actions
        for i, action in enumerate(actions):
            following = actions[i + 1] if i + 1 < len(actions) else None
            try:
                self._execute(action, following)
            except RuntimeError as exc:
                communicating = action.op not in (Op.FORWARD, Op.BACKWARD, Op.OPTIMIZER)
                if communicating or (self.tp.size > 1 and action.op is not Op.OPTIMIZER):
                    raise self.failure(step, f"{action} ({_WHAT[action.op]})", exc) from exc
                raise
        try:
            self.p2p.wait_sends()
        except RuntimeError as exc:
            raise self.failure(step, "completing the step's sends", exc) from exc
        assert not self._held and not self._posted, "the program left work behind"
        return stats

    def _execute(self, a: Action, following: Action | None) -> None:
        if a.op is Op.FORWARD:
            self._forward(a.micro, a.chunk)
        elif a.op is Op.BACKWARD:
            self._backward(a.micro, a.chunk)
        elif a.op in SENDS:
            self._send(a, following)
        elif a.op in RECVS:
            self._receive(a)
        elif a.op is Op.ALLREDUCE:
            self._allreduce(a.segment)
        else:
            self._chain = False
            t = self.targets
            with self.clock.phase("optimizer", t and t.optimizer_s):
                self.optimizer.step()
            self._stats.compute_s += self.clock.last_s

    def _forward(self, m: int, c: int) -> None:
        role, t = self.role, self.targets
        reads, loss = self._reads_tokens(c), self._has_loss(c)
        with self.clock.phase("forward", t and t.chunk_s[c][0], chain=self._chain):
            if reads or loss:
                tokens, targets = self.stream.batch_for(self._step, role.micro_batch(m))
            x = tokens.to(self.device) if reads else self._inputs.pop((m, c))
            out = self.model(x) if self.num_chunks == 1 else self.model(x, chunk=c)
            if loss:
                out = loss_fn(out, targets.to(self.device)) * self.loss_scale
                self.grads.add_loss_(out)
        self._stats.compute_s += self.clock.last_s
        self._chain = True  # a compute phase right after this one starts at its slot's end
        self._held[(m, c)] = _Held(None if reads else x, out)
        self._stats.peak_activations = max(self._stats.peak_activations, len(self._held))
        if loss:
            self._stats.local_loss = (self._stats.local_loss or 0.0) + float(out.detach().item())

    def _backward(self, m: int, c: int) -> None:
        held, t = self._held.pop((m, c)), self.targets
        if self._last_backward[c] == m:
            self.grads.arm(c)
        with self.clock.phase("backward", t and t.chunk_s[c][1], chain=self._chain):
            if self._has_loss(c):
                scale = self.loss_scaler.scale if self.loss_scaler is not None else 1.0
                (held.output * scale if scale != 1.0 else held.output).backward()
            else:
                torch.autograd.backward(held.output, self._out_grads.pop((m, c)))
        self._stats.compute_s += self.clock.last_s
        self._chain = True
        if held.inputs is not None:
            assert held.inputs.grad is not None
            self._in_grads[(m, c)] = held.inputs.grad

    def _send(self, a: Action, following: Action | None) -> None:
        if not self.role.is_leader:
            return
        if a.op is Op.SEND_ACT:
            tensor = self._held[(a.micro, a.chunk)].output
        else:
            tensor = self._in_grads.pop((a.micro, a.chunk))
        if a.peer == self.role.rank:  # a one-stage interleaved pipeline feeds itself
            self._to_self[self._tag(a)] = tensor.detach().clone()
            return
        recv = None
        if following is not None and following.op in RECVS and following.peer == a.peer:
            recv = self._recv_spec(following)
        pending = self.p2p.start((tensor, a.peer, self._tag(a)), recv)
        if recv is not None:
            assert pending is not None and following is not None
            self._posted[(following.op, following.micro, following.chunk)] = pending

    def _recv_spec(self, a: Action) -> tuple[tuple[int, ...], torch.dtype, int, int]:
        return self.shape, self.dtype, a.peer, self._tag(a)

    def _receive(self, a: Action) -> None:
        begin = time.perf_counter()
        self._chain = False  # the next phase starts when the data is there
        if not self.role.is_leader:
            tensor = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        elif a.peer == self.role.rank:
            tensor = self._to_self.pop(self._tag(a))
        else:
            pending = self._posted.pop((a.op, a.micro, a.chunk), None)
            if pending is None:
                pending = self.p2p.start(None, self._recv_spec(a))
                assert pending is not None
            tensor, sent_at = pending.wait()
            if self.clock.dilation is not None and self.targets is not None:
                assert sent_at is not None
                modelled = (self.targets.recv_act_s if a.op is Op.RECV_ACT
                            else self.targets.recv_grad_s)
                sleep_until(sent_at + self.clock.dilation * modelled)
        tensor = broadcast_from_leader(tensor, self.tp)
        if a.op is Op.RECV_ACT:
            self._inputs[(a.micro, a.chunk)] = tensor.requires_grad_()
        else:
            self._out_grads[(a.micro, a.chunk)] = tensor
        self._stats.recv_wait_s += time.perf_counter() - begin

    def _allreduce(self, segment: str) -> None:
        begin = time.perf_counter()
        self._chain = False
        run = self.grads.run_of(segment)
        if self.grads.reduce(segment) and self.targets is not None:
            slot = sum(self.targets.allreduce_s[s] for s in run)
            with self.clock.phase(GRADIENT_SYNC, slot):
                pass
        self._stats.sync_s += time.perf_counter() - begin

    # ---- warm-up: how fast is this host? ---------------------------------------------------
    def time_compute(self, min_s: float) -> float:
        """Real seconds of one pass over this stage's micro-batches -- forward and backward
        of each chunk, unpadded, with made-up stage inputs and output gradients (no data moves
        between stages) -- repeated for at least ``min_s`` (at least 3 passes); the median
        after the first. TP ranks go round together (their leader decides when to stop).
        Leaves the gradients zeroed."""
        role, passes = self.role, []
        begin = time.perf_counter()
        while True:
            more = len(passes) < 3 or time.perf_counter() - begin < min_s
            if self.tp.size > 1:
                flag = broadcast_from_leader(torch.tensor([float(more)], device=self.device),
                                             self.tp)
                more = bool(flag.item())
            if not more:
                break
            start = time.perf_counter()
            for m in range(role.num_micro_batches):
                tokens, targets = self.stream.batch_for(0, role.micro_batch(m))
                for c in range(self.num_chunks):
                    x = (tokens if self._reads_tokens(c)
                         else torch.randn(self.shape, dtype=self.dtype).requires_grad_())
                    out = self.model(x.to(self.device), chunk=c)
                    if self._has_loss(c):
                        loss_fn(out, targets.to(self.device)).backward()
                    else:
                        torch.autograd.backward(out, torch.randn_like(out))
            passes.append(time.perf_counter() - start)
        self.grads.zero_()
        return statistics.median(passes[1:])


_WHAT = {Op.SEND_ACT: "sending activations", Op.SEND_GRAD: "sending a gradient",
         Op.RECV_ACT: "receiving activations", Op.RECV_GRAD: "receiving a gradient",
         Op.ALLREDUCE: "the gradient all-reduce", Op.FORWARD: "a tensor-parallel forward",
         Op.BACKWARD: "a tensor-parallel backward"}
