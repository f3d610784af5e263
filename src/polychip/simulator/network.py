"""Links as the simulator sees them.

A node's NIC has a send side and a receive side (full duplex), each with the node's NIC
bandwidth, shared equally between the flows crossing it at that moment. Where the cluster
declares a measured link between two node groups, a flow from node a to node b of those
groups also crosses the link a -> b (one per ordered pair of nodes, with the measured
bandwidth), shared equally between the flows from a to b. A flow's rate is the tightest of
its shares, recomputed whenever a flow starts or ends on one of its resources (fluid
model). A flow may stand for `k` identical flows of replicas that run in lockstep
(`Flow.loads`, `Leg.pairs`), so one representative loads a NIC and a link as much as all
of them do.

Everything else a transfer goes through is a fixed delay with no contention: the latency,
the chips' scale-up link inside a node, and the host-memory copies of a cross-island
transfer. A transfer is a chain of such legs (`Leg`), run one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# (node, 0 = send side / 1 = receive side) of a NIC, or (src node, dst node, PAIR): the
# measured link from one node to another
Resource = tuple[int, ...]
Pair = tuple[int, int]  # (src node, dst node)
PAIR = 2
Post = Callable[..., None]  # post(time, callback, *args): schedule an event
LinkBw = Callable[[int, int], float | None]  # measured bandwidth src -> dst, None: NICs only


@dataclass(frozen=True, slots=True)
class Leg:
    """A fixed delay (`loads` empty), or `n_bytes` through the NIC sides in `loads` and
    the node pairs in `pairs` (each with the number of flows it stands for). Without
    `pairs`, a flow leaving one node for one other crosses that pair once per send load."""

    delay_s: float = 0.0
    n_bytes: float = 0.0
    loads: tuple[tuple[Resource, int], ...] = ()
    pairs: tuple[tuple[Pair, int], ...] = ()

    def node_pairs(self) -> tuple[tuple[Pair, int], ...]:
        if self.pairs:
            return self.pairs
        tx = [(res[0], k) for res, k in self.loads if res[1] == 0]
        rx = [res[0] for res, _ in self.loads if res[1] == 1]
        if len(tx) == 1 and len(rx) == 1:
            return (((tx[0][0], rx[0]), tx[0][1]),)
        return ()


class Flow:
    __slots__ = ("done", "left", "loads", "rate", "t", "version")

    def __init__(self, n_bytes: float, loads: tuple[tuple[Resource, int], ...], done) -> None:
        self.left = n_bytes
        self.loads = loads
        self.done = done  # callback(time)
        self.rate = 0.0
        self.t = 0.0
        self.version = 0


class Fabric:
    """The cluster's NICs and the flows crossing them."""

    def __init__(
        self, nic_bw_bytes_per_s: Sequence[float], post: Post, link_bw: LinkBw | None = None
    ) -> None:
        self._cap: dict[Resource, float] = {}
        for node, bw in enumerate(nic_bw_bytes_per_s):  # per node, each direction
            self._cap[(node, 0)] = self._cap[(node, 1)] = bw
        self._link_bw = link_bw or (lambda a, b: None)
        self._post = post
        self._flows: dict[Resource, set[Flow]] = {}
        self._units: dict[Resource, int] = {}
        self.bytes_moved = 0.0

    def _loads(self, leg: Leg) -> tuple[tuple[Resource, int], ...]:
        """The leg's NIC sides and the measured links it crosses."""
        out = list(leg.loads)
        for (a, b), k in leg.node_pairs():
            res = (a, b, PAIR)
            if res not in self._cap:
                bw = self._link_bw(a, b)
                self._cap[res] = float("inf") if bw is None else bw  # inf: the NICs decide
            if self._cap[res] != float("inf"):
                out.append((res, k))
        return tuple(out)

    def start(self, now: float, leg: Leg, done: Callable[[float], None]) -> None:
        loads = self._loads(leg)
        flow = Flow(leg.n_bytes, loads, done)
        flow.t = now
        for res, k in loads:
            self._flows.setdefault(res, set()).add(flow)
            self._units[res] = self._units.get(res, 0) + k
        self.bytes_moved += leg.n_bytes
        self._rerate(now, {res for res, _ in loads})

    def _rerate(self, now: float, resources: set[Resource]) -> None:
        touched: set[Flow] = set()
        for res in resources:
            touched |= self._flows.get(res, set())
        cap, units = self._cap, self._units
        for f in touched:
            rate = min(cap[res] / units[res] for res, _ in f.loads)
            if rate == f.rate:
                continue  # its finish event still stands
            f.left = max(0.0, f.left - f.rate * (now - f.t))
            f.t, f.rate = now, rate
            f.version += 1
            self._post(now + f.left / rate, self._finish, f, f.version)

    def _finish(self, now: float, flow: Flow, version: int) -> None:
        if version != flow.version:
            return  # rescheduled since
        for res, k in flow.loads:
            self._flows[res].discard(flow)
            self._units[res] -= k
        flow.version += 1
        self._rerate(now, {res for res, _ in flow.loads})
        flow.done(now)


def run_chain(now: float, legs: tuple[Leg, ...], fabric: Fabric, post: Post, done) -> None:
    """Run `legs` one after the other from `now`; call done(time) after the last."""
    if not legs:
        done(now)
        return
    leg, rest = legs[0], legs[1:]

    def next_leg(t: float) -> None:
        run_chain(t, rest, fabric, post, done)

    if leg.loads and leg.n_bytes > 0:
        fabric.start(now, leg, next_leg)
    elif leg.delay_s > 0:
        post(now + leg.delay_s, next_leg)
    else:
        next_leg(now)
