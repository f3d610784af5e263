"""Tensor-parallel collectives inside a node, at the bandwidth collectives really get.

A ring collective over the TP group runs at the chip's one-way scale-up link figure times its
`link_efficiency` (nccl-tests bus bandwidth over the link: 0.7 for A100 NVLink) with a 5 µs
step latency. Without peer-to-peer (GeForce cards: NCCL stages every transfer through pinned
host memory) a ring step goes device -> host -> device while the device also receives: it
gets `HOST_STAGED_FRACTION` of the one-way PCIe figure and `HOST_STAGED_LATENCY_S` per step.
All-reduce = reduce-scatter + all-gather: each of those is half of a ring all-reduce.
(Data-parallel gradient sync is `gradsync.py`'s, not this.)
"""

from __future__ import annotations

from polychip.costmodel.comm import ring_allreduce_time_s
from polychip.spec.accelerators import Accelerator

INTRA_NODE_LATENCY_S = 5e-6
"""Per-step latency of a collective between chips of one node with peer-to-peer (NVLink,
HCCS, xGMI, PCIe P2P): a few µs (nccl-tests small-message all-reduce times)."""

HOST_STAGED_FRACTION = 0.48
"""Per-direction bandwidth of a GPU pair without peer-to-peer while both directions are busy,
over the one-way PCIe figure: 30 GB/s bidirectional (15 each way) of 31.5 GB/s one way,
measured between two RTX 5090 on PCIe 5.0 x8 with P2P off (24 GB/s one way alone), against
28 / 56 GB/s with a patched driver enabling P2P (reported Dec 2025 with the driver fork;
one secondary report: confidence low, a profile of the node replaces it)."""

HOST_STAGED_LATENCY_S = 24e-6
"""GPU-to-GPU latency through host memory: 24 µs between two RTX 4090 without P2P, 5 µs
with the patched driver (same report)."""


def tp_link(chip: Accelerator) -> tuple[float, float]:
    """(bus bandwidth bytes/s, step latency s) of a ring over the chips of one node."""
    if chip.peer_to_peer:
        return chip.link_bw_bytes_per_s * chip.link_efficiency, INTRA_NODE_LATENCY_S
    return chip.link_bw_bytes_per_s * HOST_STAGED_FRACTION, HOST_STAGED_LATENCY_S


def tp_collective_s(chip: Accelerator, kind: str, n_bytes: float, tp: int) -> float:
    """Seconds of one TP collective of `n_bytes` (the whole tensor) over `tp` chips."""
    bw, latency = tp_link(chip)
    ring = ring_allreduce_time_s(n_bytes, tp, bw, latency)
    if kind == "all-reduce":
        return ring
    if kind in ("all-gather", "reduce-scatter"):
        return ring / 2
    raise ValueError(f"unknown collective {kind!r}")
