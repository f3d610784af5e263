"""`polychip catalog`: the accelerator catalog as a table (figures and their confidence)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from polychip.spec.accelerators import catalog_entry, catalog_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("catalog", help="print the accelerator catalog")
    p.add_argument("--sources", action="store_true", help="show the source of every figure")
    p.set_defaults(func=run)


def _fmt(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    """A figure for a table: `digits` decimals, at least two below 1 (so 0.05 and 0.2
    TFLOP/s do not print as 0.1 and 0.2, or both as 0)."""
    if value is None:
        return "—"
    x = value / scale
    if 0 < abs(x) < 1:
        digits = max(digits, 2)
    return f"{x:,.{digits}f}"


def run(args: argparse.Namespace) -> int:
    table = Table(title="polychip accelerator catalog (dense peaks; bandwidths GB/s)")
    for col in (
        "name",
        "vendor",
        "device",
        "backend",
        "bf16 TFLOP/s",
        "memory GiB",
        "memory GB/s",
        "link GB/s",
        "efficiency",
        "aliases",
    ):
        table.add_column(
            col, justify="right" if "/" in col or col in ("memory GiB", "efficiency") else "left"
        )
    for name in catalog_names():
        entry = catalog_entry(name)
        figs = {k: (v or {}).get("value") if isinstance(v, dict) else v for k, v in entry.items()}
        table.add_row(
            name,
            entry.get("vendor", ""),
            entry.get("device_type", ""),
            entry.get("collective_library", ""),
            _fmt(figs.get("peak_tflops_bf16"), digits=1),
            _fmt(figs.get("memory_gib")),
            _fmt(figs.get("memory_gbps")),
            _fmt(figs.get("intra_node_gbps")),
            _fmt(figs.get("compute_efficiency"), digits=2),
            ", ".join(entry.get("aliases", [])[:3]),
        )
    console = Console()
    console.print(table)
    if args.sources:
        for name in catalog_names():
            entry = catalog_entry(name)
            console.print(f"[bold]{name}[/bold]")
            for key, fig in entry.items():
                if isinstance(fig, dict):
                    console.print(
                        f"  {key} = {fig.get('value')} ({fig.get('confidence')}): "
                        f"{fig.get('source')}"
                    )
    console.print(
        "Unknown chip? Declare it under `chips:` in the cluster file (docs/accelerators.md)."
    )
    return 0
