"""Point-to-point transfers between pipeline stages: activations forward, gradients back.

Only a stage's TP leader sends and receives (the schedule's rule); it shares what it received
with its TP group (:func:`polychip.runtime.tensor_parallel.broadcast_from_leader`).

Sends never block the sender (``isend``; the tensor is kept until the step's end, when
:meth:`P2P.wait_sends` completes them). A receive is posted with ``irecv`` into a buffer of the
known shape and waited for when the schedule needs the data. A send that the schedule follows
by a receive from the same peer is posted together with it (``batch_isend_irecv``): backends
whose point-to-point operations rendezvous in order (NCCL) need the pair fused, as in
Megatron's ``send_forward_recv_backward``.

Routes: a peer in the same island on devices with a native backend is reached through the
island's pipeline group (that backend); any other peer through the world group (gloo, the
bridge between islands), staged through host memory when the tensors live on a device.

With emulated chips every message carries the time it was sent (the wire format is float64:
the payload, then the timestamp), so that the receiver can make the transfer last what the
cost model says it would on the emulated link (``dilation x`` its time), counted from the send.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

ACTIVATION, GRADIENT = 0, 1


def tag_of(micro: int, kind: int) -> int:
    """Messages between two ranks are matched by tag: micro-batch and direction."""
    return 2 * micro + kind


@dataclass(frozen=True)
class Route:
    """How this rank reaches one peer: the group (None: the world) and whether device tensors
    go through host memory (the gloo bridge talks to the host)."""

    group: object | None
    staged: bool


class PendingRecv:
    """A posted receive; :meth:`wait` returns (tensor on the rank's device, send time or None)."""

    def __init__(self, work: dist.Work, buffer: torch.Tensor, shape: Sequence[int],
                 dtype: torch.dtype, device: torch.device, stamped: bool) -> None:
        self.work, self.buffer, self.shape = work, buffer, tuple(shape)
        self.dtype, self.device, self.stamped = dtype, device, stamped

    def wait(self) -> tuple[torch.Tensor, float | None]:
        self.work.wait()
        if not self.stamped:
            return self.buffer.to(self.device).view(self.shape), None
        payload = self.buffer[:-1].to(self.dtype).to(self.device).view(self.shape)
        return payload, float(self.buffer[-1].item())


class P2P:
    """One rank's sends and receives. ``routes``: peer rank -> :class:`Route`."""

    def __init__(self, routes: dict[int, Route], device: torch.device, *, stamped: bool
                 ) -> None:
        self.routes, self.device, self.stamped = routes, device, stamped
        self._sends: list[tuple[dist.Work, torch.Tensor]] = []

    def _wire(self, tensor: torch.Tensor, route: Route) -> torch.Tensor:
        if self.stamped:
            flat = tensor.detach().reshape(-1).to(device="cpu" if route.staged else tensor.device,
                                                  dtype=torch.float64)
            stamp = torch.tensor([time.perf_counter()], dtype=torch.float64, device=flat.device)
            return torch.cat((flat, stamp))
        out = tensor.detach().contiguous()
        return out.cpu() if route.staged and out.device.type != "cpu" else out

    def _buffer(self, shape: Sequence[int], dtype: torch.dtype, route: Route) -> torch.Tensor:
        where = torch.device("cpu") if route.staged else self.device
        if self.stamped:
            return torch.empty(int(torch.Size(shape).numel()) + 1, dtype=torch.float64,
                               device=where)
        return torch.empty(tuple(shape), dtype=dtype, device=where)

    def start(self, send: tuple[torch.Tensor, int, int] | None,
              recv: tuple[Sequence[int], torch.dtype, int, int] | None) -> PendingRecv | None:
        """Post a send (tensor, peer, tag) and/or a receive (shape, dtype, peer, tag); both at
        once when given together (they go to the same peer)."""
        ops: list[dist.P2POp] = []
        if send is not None:
            tensor, peer, tag = send
            route = self.routes[peer]
            wire = self._wire(tensor, route)
            ops.append(dist.P2POp(dist.isend, wire, peer, route.group, tag))  # type: ignore[arg-type]
        pending = None
        if recv is not None:
            shape, dtype, peer, tag = recv
            route = self.routes[peer]
            buffer = self._buffer(shape, dtype, route)
            ops.append(dist.P2POp(dist.irecv, buffer, peer, route.group, tag))  # type: ignore[arg-type]
        if len(ops) == 2:
            works = dist.batch_isend_irecv(ops)
        else:
            op = ops[0]
            works = [op.op(op.tensor, op.peer, op.group, op.tag)]
        if send is not None:
            self._sends.append((works[0], ops[0].tensor))
        if recv is not None:
            pending = PendingRecv(works[-1], ops[-1].tensor, shape, dtype, self.device,
                                  self.stamped)
        return pending

    def wait_sends(self) -> None:
        """Complete every send posted so far (their receivers have all been scheduled)."""
        for work, _ in self._sends:
            work.wait()
        self._sends.clear()
