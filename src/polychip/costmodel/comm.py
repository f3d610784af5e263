"""Communication times: point-to-point and ring collectives over one kind of link.

Links, fastest first: the chip's scale-up link inside a node (NVLink, HCCS, ...); the
node's NIC between nodes of one island; and the *bridge* between islands of different
vendors, whose collective libraries cannot talk to each other: device -> host memory ->
NIC -> host memory -> device, so two host copies are added to the network time.
"""

from __future__ import annotations

from enum import StrEnum


class LinkKind(StrEnum):
    LOCAL = "local"  # same device: no transfer
    INTRA_NODE = "intra-node"
    INTER_NODE = "inter-node"
    BRIDGE = "cross-island"


def p2p_time_s(n_bytes: float, bw_bytes_per_s: float, latency_s: float) -> float:
    if n_bytes <= 0:
        return 0.0
    return n_bytes / bw_bytes_per_s + latency_s


def ring_allreduce_time_s(n_bytes: float, p: int, bw_bytes_per_s: float, latency_s: float) -> float:
    """2(p-1)/p x n / bw + 2(p-1) x latency (Patarasuk & Yuan 2009; docs/references.md)."""
    if p <= 1 or n_bytes <= 0:
        return 0.0
    return 2 * (p - 1) / p * n_bytes / bw_bytes_per_s + 2 * (p - 1) * latency_s


def bridge_time_s(
    n_bytes: float, net_bw_bytes_per_s: float, host_copy_bw_bytes_per_s: float, latency_s: float
) -> float:
    """One cross-island transfer, staged through both hosts' memory (not overlapped)."""
    if n_bytes <= 0:
        return 0.0
    return n_bytes / net_bw_bytes_per_s + 2 * n_bytes / host_copy_bw_bytes_per_s + latency_s


def hierarchical_allreduce_time_s(
    n_bytes: float,
    islands: list[tuple[int, float, float]],
    bridge_bw_bytes_per_s: float,
    host_copy_bw_bytes_per_s: float,
    latency_s: float,
) -> float:
    """Closed form of `polychip.plan.collectives.allreduce` when every island's ring has one
    bandwidth: reduce-scatter inside each island, every rank bridges its own shard (the
    smallest island's ranks the largest, n / p_min: copied to host memory and back, and
    all-reduced among one rank per island), all-gather inside each island. The planner's
    quick estimate uses it; the cost model prices the description hop by hop (gradsync.py).

    `islands`: (members, ring bandwidth, ring latency) per island. Islands run their
    phases concurrently; the slowest island sets each phase.
    """
    if not islands:
        return 0.0
    inner = max(ring_allreduce_time_s(n_bytes, p, bw, lat) for p, bw, lat in islands)
    k = len(islands)
    if k == 1:
        return inner
    shard = n_bytes / min(p for p, _, _ in islands)
    cross = (
        2 * (k - 1) / k * shard / bridge_bw_bytes_per_s
        + 2 * shard / host_copy_bw_bytes_per_s
        + 2 * (k - 1) * latency_s
    )
    return inner + cross
