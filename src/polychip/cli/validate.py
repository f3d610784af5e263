"""`polychip validate CLUSTER.yaml`: check a cluster file and summarise what it holds."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from polychip.cli.catalog import _fmt
from polychip.spec.cluster import load_cluster


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a cluster file")
    p.add_argument("cluster", help="cluster YAML file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster)
    table = Table(title=f"{args.cluster}: cluster {cluster.name!r} is valid")
    for col in (
        "nodes",
        "chip",
        "chips/node",
        "chips",
        "island (vendor/library)",
        "NIC Gb/s",
        "memory GiB",
        "bf16 TFLOP/s",
    ):
        table.add_column(col)
    for g in cluster.groups:
        peak = g.chip.peak_flops_bf16
        table.add_row(
            str(g.num_nodes),
            g.chip.name,
            str(g.chips_per_node),
            str(g.num_devices),
            g.chip.island,
            _fmt(g.nic_bw_bytes_per_s * 8, 1e9),
            _fmt(g.chip.memory_bytes, 2**30),
            _fmt(peak, 1e12),
        )
    console = Console()
    console.print(table)
    islands = sorted({g.chip.island for g in cluster.groups})
    console.print(
        f"{cluster.num_devices} chips in {len(islands)} island(s): {', '.join(islands)}; "
        f"network {cluster.network.kind}, {cluster.network.latency_s * 1e6:.0f} µs"
    )
    for link in cluster.links:
        a, b = (cluster.groups[i].label for i in link.groups)
        lat = cluster.network.latency_s if link.latency_s is None else link.latency_s
        console.print(
            f"link {a} <-> {b}: {link.bw_bytes_per_s * 8 / 1e9:g} Gb/s, {lat * 1e6:g} µs (measured)"
        )
    return 0
