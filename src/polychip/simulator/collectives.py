"""A segment's gradient sync replayed hop by hop: the steps of the one description of the
collective (`polychip.plan.collectives`), each hop as the cost model prices it
(`polychip.costmodel.gradsync`), run as chains of legs the fabric can carry.

A step's hops start together and the step ends when its last hop does; steps follow each
other. A hop between nodes waits its ring's latencies, then (across islands) copies its
chunk to host memory, sends it as a *flow* through the sender's and the receiver's NIC
sides -- shared with every other flow crossing them at that moment, the pipelines'
transfers included -- and copies it back to the device. A hop inside a node runs over the
chip's scale-up link, shared equally with the step's other hops on that chip (a fixed
delay: nothing else loads that link in the replay). Alone, every step takes exactly the
cost model's time.
"""

from __future__ import annotations

from collections.abc import Sequence

from polychip.costmodel import CostModel, LinkKind
from polychip.costmodel.gradsync import Hop, segment_hops, step_rates
from polychip.plan.plan import Replica
from polychip.plan.segments import Segment
from polychip.simulator.network import Leg

Phase = tuple[str, list[tuple[Hop, tuple[Leg, ...]]]]


def hop_legs(hop: Hop, rate: float) -> tuple[Leg, ...]:
    """``rate``: its share of the chip's link inside a node (between nodes the fabric shares
    the NICs as flows come and go)."""
    wait = Leg(delay_s=hop.latency_s)
    if hop.kind is LinkKind.INTRA_NODE:
        return (wait, Leg(delay_s=hop.transfer_s(rate)))
    flow = Leg(n_bytes=hop.n_bytes, loads=(((hop.src_node, 0), 1), ((hop.dst_node, 1), 1)))
    if hop.copy_s > 0:
        copy = Leg(delay_s=hop.copy_s / 2)
        return (wait, copy, flow, copy)
    return (wait, flow)


def sync_phases(cm: CostModel, replicas: Sequence[Replica], seg: Segment, zero1: bool
                ) -> list[Phase]:
    """[(phase name, [(hop, its legs)])] of the segment's gradient sync: the all-reduce's
    steps, or ZeRO-1's reduce-scatter then all-gather (of the parameters)."""
    job = cm.job
    kinds = ([("reduce-scatter", job.reduce_bytes), ("all-gather", job.compute_bytes)]
             if zero1 else [("all-reduce", job.reduce_bytes)])
    out: list[Phase] = []
    for kind, per_param in kinds:
        for name, hops in segment_hops(cm, replicas, seg, kind, per_param):  # type: ignore[arg-type]
            legs = [(h, hop_legs(h, r)) for h, r in zip(hops, step_rates(hops), strict=True)]
            out.append((name, legs))
    return out
