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


COLUMNS = (
    "name", "vendor", "device", "backend", "fp32", "tf32", "bf16", "fp16", "memory GiB",
    "memory GB/s", "link GB/s", "p2p", "link eff", "GEMM eff", "units", "power W", "rent $/h",
    "aliases",
)  # fmt: skip
NUMERIC = frozenset(COLUMNS[4:-1])


def _rent(value) -> str:
    """A rent: one figure or a [low, high] range; "—" where unknown (declare it)."""
    if isinstance(value, list | tuple):
        return "–".join(_fmt(v, digits=2) for v in value)
    return _fmt(value, digits=2)


def _row(name: str) -> list[str]:
    entry = catalog_entry(name)
    figs = {k: (v or {}).get("value") if isinstance(v, dict) else v for k, v in entry.items()}
    p2p = figs.get("peer_to_peer")
    return [
        name,
        entry.get("vendor", ""),
        entry.get("device_type", ""),
        entry.get("collective_library", ""),
        *(_fmt(figs.get(f"peak_tflops_{p}"), digits=1) for p in ("fp32", "tf32", "bf16", "fp16")),
        _fmt(figs.get("memory_gib")),
        _fmt(figs.get("memory_gbps")),
        _fmt(figs.get("intra_node_gbps")),
        "—" if p2p is None else ("yes" if p2p else "no (host)"),
        _fmt(figs.get("link_efficiency"), digits=2),
        _fmt(figs.get("compute_efficiency"), digits=2),
        _fmt(figs.get("compute_units")),
        _fmt(figs.get("board_power_w")),
        _rent(figs.get("rent_usd_per_hour")),
        ", ".join(entry.get("aliases", [])[:3]),
    ]


def run(args: argparse.Namespace) -> int:
    table = Table(
        title="polychip accelerator catalog (dense peaks TFLOP/s by precision; bandwidths "
        "GB/s; board power W; rent $/h, — where unknown: declare it in the cluster file)"
    )
    for col in COLUMNS:
        table.add_column(col, justify="right" if col in NUMERIC else "left")
    for name in catalog_names():
        table.add_row(*_row(name))
    console = Console()
    console.print(table)
    if args.sources:
        for name in catalog_names():
            entry = catalog_entry(name)
            console.print(f"[bold]{name}[/bold]")
            for key, fig in entry.items():
                if isinstance(fig, dict):
                    dated = f", {fig['date']}" if fig.get("date") else ""
                    console.print(
                        f"  {key} = {fig.get('value')} ({fig.get('confidence')}{dated}): "
                        f"{fig.get('source')}", markup=False, highlight=False
                    )
    console.print(
        "Unknown chip? Declare it under `chips:` in the cluster file (docs/accelerators.md)."
    )
    return 0
