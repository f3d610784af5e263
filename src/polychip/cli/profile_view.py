"""Rich rendering of a profile for `polychip profile` (presentation only)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from polychip.spec.profile import Profile

MIB = 1 << 20


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def render_profile(console: Console, p: Profile, path: str) -> None:
    prov = p.provenance
    console.print(f"[bold]{p.chip}[/bold] ({prov.device}, {prov.device_type}, torch "
                  f"{prov.torch_version}): model {p.model.name or '?'}, {p.precision}, "
                  f"median of {prov.repeats} after {prov.warmup} warm-up")
    parts = Table(title="per micro-batch: a block's forward, backward, backward with recompute "
                  "and saved bytes; the embedding's and the head + loss's forward + backward "
                  "(ms)")
    for col in ("tp", "mb", "seq", "fwd", "bwd", "rec. bwd", "saved MiB", "emb", "head"):
        parts.add_column(col, justify="right")
    for b, e, h in zip(p.blocks, p.embedding, p.head, strict=False):
        act = "-" if b.activation_bytes is None else f"{b.activation_bytes / MIB:.2f}"
        rec = "-" if b.recompute_bwd_s is None else f"{b.recompute_bwd_s * 1e3:.3f}"
        parts.add_row(str(b.tp), str(b.micro_batch), str(b.seq_len), f"{b.fwd_s * 1e3:.3f}",
                      f"{b.bwd_s * 1e3:.3f}", rec, act, f"{(e.fwd_s + e.bwd_s) * 1e3:.3f}",
                      f"{(h.fwd_s + h.bwd_s) * 1e3:.3f}")
    console.print(parts)
    if p.optimizer_s_per_param is not None:
        console.print(f"optimizer (AdamW): {(p.optimizer_fixed_s or 0) * 1e3:.3f} ms per step + "
                      f"{p.optimizer_s_per_param * 1e9:.3f} ns per parameter "
                      f"(timed up to {p.optimizer_num_params:,})")
    links = Table(title="links: bus bandwidth GB/s by message size")
    for col in ("what", "ranks", *(_size(n) for n in sorted({c.message_bytes for c in
                                                               (*p.collectives, *p.p2p)}))):
        links.add_column(col, justify="right" if col not in ("what",) else "left")
    sizes = sorted({c.message_bytes for c in (*p.collectives, *p.p2p)})
    rows: dict[tuple[str, int], dict[int, float]] = {}
    for c in p.collectives:
        rows.setdefault((c.op, c.group_size), {})[c.message_bytes] = c.bus_bytes_per_s
    for t in p.p2p:
        rows.setdefault(("p2p", 2), {})[t.message_bytes] = t.bytes_per_s
    for (what, ranks), by_size in rows.items():
        links.add_row(what, str(ranks), *(f"{by_size[n] / 1e9:.2f}" if n in by_size else ""
                                          for n in sizes))
    if rows:
        console.print(links)
    for name, points in (("device -> host", p.d2h), ("host -> device", p.h2d)):
        if points:
            console.print(f"{name}: " + ", ".join(f"{_size(t.message_bytes)} "
                                                  f"{t.bytes_per_s / 1e9:.2f} GB/s"
                                                  for t in points))
    console.print(f"wrote {path}")
