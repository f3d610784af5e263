"""A resolved Cluster as a cluster-file mapping (every chip figure inline): embedded in plan
files, and read back by `cluster_from_dict` to the same cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polychip.spec.cluster_links import links_to_dict
from polychip.spec.economics import economics_to_dict

if TYPE_CHECKING:
    from polychip.spec.accelerators import Accelerator
    from polychip.spec.cluster import Cluster

CLUSTER_SCHEMA_VERSION = 1


def _tflops(flops: float | None) -> float | None:
    return None if flops is None else flops / 1e12


def _chip_to_dict(chip: Accelerator) -> dict[str, Any]:
    """Every figure of a resolved chip, in the cluster file's units (None: not known)."""
    return {
        "vendor": chip.vendor,
        "display_name": chip.display_name,
        "device_type": chip.device_type,
        "torch_backend": chip.torch_backend,
        "collective_library": chip.collective_library,
        "intra_node_link": chip.intra_node_link,
        "peak_tflops_fp32": _tflops(chip.peak_flops_fp32),
        "peak_tflops_tf32": _tflops(chip.peak_flops_tf32),
        "peak_tflops_bf16": _tflops(chip.peak_flops_bf16),
        "peak_tflops_fp16": _tflops(chip.peak_flops_fp16),
        "memory_gib": chip.memory_bytes / 1024**3,
        "memory_gbps": chip.memory_bw_bytes_per_s / 1e9,
        "intra_node_gbps": chip.link_bw_bytes_per_s * 2 / 1e9,
        "compute_efficiency": chip.compute_efficiency,
        "attention_efficiency": chip.attention_efficiency,
        "compute_units": chip.compute_units,
        "peer_to_peer": chip.peer_to_peer,
        "link_efficiency": chip.link_efficiency,
        "kernel_launch_us": None if chip.kernel_launch_s is None else chip.kernel_launch_s * 1e6,
    } | economics_to_dict(chip.economics)


def cluster_to_dict(cluster: Cluster) -> dict[str, Any]:
    """The resolved cluster (every chip figure inline) -- embedded in plan files."""
    chips = {chip.name: _chip_to_dict(chip) for chip in cluster.chips()}
    return {
        "schema_version": CLUSTER_SCHEMA_VERSION,
        "name": cluster.name,
        "nodes": [
            {
                "chip": g.chip.name,
                "count": g.num_nodes,
                "chips_per_node": g.chips_per_node,
                "nic_gbps": g.nic_bw_bytes_per_s * 8 / 1e9,
                "label": g.label,
            }
            | ({} if g.node_economics is None else economics_to_dict(g.node_economics))
            for g in cluster.groups
        ],
        "network": {
            "kind": cluster.network.kind,
            "latency_us": cluster.network.latency_s * 1e6,
            "host_copy_gbps": cluster.network.host_copy_bw_bytes_per_s / 1e9,
        },
        "links": links_to_dict(cluster.links),
        "chips": {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in chips.items()},
    }
