"""Chrome trace (JSON) of a simulated step: open it in https://ui.perfetto.dev.

One process per replica with one track (thread) per device, named by rank, stage, chip
and node; one more process, "links", with tracks per node pair and link kind (several
lanes when transfers overlap). Times are in microseconds. Replicas replayed once for
their class show their representative's timeline on their own devices and links.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polychip.simulator.picture_rows import KINDS, wait_spans
from polychip.simulator.timeline import SimResult

US = 1e6


def _x(name: str, cat: str, start: float, end: float, pid: int, tid: int, **args) -> dict:
    ev = {"name": name, "cat": cat, "ph": "X", "ts": start * US, "dur": (end - start) * US}
    ev.update(pid=pid, tid=tid)
    if args:
        ev["args"] = args
    return ev


def _meta(what: str, pid: int, name: str, tid: int | None = None) -> dict:
    ev: dict[str, Any] = {"name": what, "ph": "M", "pid": pid, "args": {"name": name}}
    if tid is not None:
        ev["tid"] = tid
    return ev


def _category(token: str) -> str:
    if token.startswith(("F", "B", "W")):
        return "compute"
    if token == "OPT":
        return "optimizer"
    return "allreduce" if token.startswith("AR") else "wait"


def _device_spans(prog) -> list[tuple]:
    """(start, end, token, category, waits for) of one device track: waits split into
    what they wait for (the other stage, the link, the other holders, the sync itself)."""
    out = [(s, e, tok, _category(tok), None) for s, e, tok in prog.spans]
    began = prog.wait_began if len(prog.wait_began) == len(prog.waits) else None
    for i, (since, end, token) in enumerate(prog.waits):
        pieces = wait_spans(since, end, token, began[i] if began else since) or [
            (since, end, "AR" if token.startswith("AR") else "wait_link")
        ]
        for s, e, kind in pieces:
            out.append((s, e, token, "allreduce" if kind == "AR" else "wait", KINDS[kind][0]))
    return out


def trace_events(result: SimResult) -> list[dict]:
    return list(iter_trace_events(result))


def iter_trace_events(result: SimResult) -> Iterator[dict]:
    plan, rec = result.plan, result.recording
    first_rank, rank = [], 0
    for r in plan.replicas:
        first_rank.append(rank)
        rank += r.num_devices
    rep_of = {m: c.rep for c in rec.classes for m in c.members}
    progs = {(p.replica, p.stage): p for p in rec.programs}
    spans = {p.index: _device_spans(p) for p in rec.programs}
    for ri, r in enumerate(plan.replicas):
        pid = ri + 1
        yield _meta("process_name", pid, f"replica {ri}")
        yield (
            {"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}}
        )
        rank = first_rank[ri]
        for si, st in enumerate(r.stages):
            prog = progs[(rep_of[ri], si)]
            for tp in range(st.tp):
                label = f"r{rank} · stage {si}" + (f" tp{tp}" if st.tp > 1 else "")
                yield _meta("thread_name", pid, f"{label} · {st.chip} · node {st.node}", rank)
                for start, end, token, cat, why in spans[prog.index]:
                    if why is None:
                        yield _x(token, cat, start, end, pid, rank)
                    else:
                        yield _x(token, cat, start, end, pid, rank, waits_for=why)
                rank += 1
    links_pid = len(plan.replicas) + 1
    yield _meta("process_name", links_pid, "links")
    transfers = []
    for start, end, src, dst, kind, n in rec.transfers:
        a, b = rec.programs[src], rec.programs[dst]
        for m in next(c.members for c in rec.classes if c.rep == a.replica):
            nodes = plan.replicas[m].stages
            transfers.append((start, end, nodes[a.stage].node, nodes[b.stage].node, kind, n, ""))
    for start, end, seg, phase, a, b, kind, n in rec.hops:
        transfers.append((start, end, a, b, kind, n, f"AR[{seg}] {phase}"))
    lanes: dict[tuple, list[float]] = {}
    tids: dict[tuple, int] = {}
    for start, end, a, b, kind, n, what in sorted(transfers, key=lambda t: t[:2]):
        ends = lanes.setdefault((a, b, kind), [])
        lane = next((i for i, e in enumerate(ends) if e <= start), len(ends))
        if lane == len(ends):
            ends.append(end)
        ends[lane] = end
        key = (a, b, kind, lane)
        if key not in tids:
            tids[key] = len(tids)
            name = f"node {a} → node {b} · {kind}" + (f" #{lane + 1}" if lane else "")
            yield _meta("thread_name", links_pid, name, tids[key])
        name = what or "activations/gradients"
        yield _x(name, str(kind), start, end, links_pid, tids[key], bytes=n)


def write_trace(result: SimResult, path: str | Path) -> int:
    """Stream the trace to `path` (events written as they are made); return their count."""
    other = {
        "source": "polychip simulate",
        "step_time_s": result.step_time_s,
        "schedule": result.plan.schedule,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    encode = json.JSONEncoder(separators=(",", ":")).encode
    count = 0
    with open(path, "w") as f:
        f.write('{"displayTimeUnit":"ms","otherData":' + encode(other) + ',"traceEvents":[')
        batch: list[str] = []
        for ev in iter_trace_events(result):
            batch.append(encode(ev))
            count += 1
            if len(batch) == 4096:
                f.write(("," if count > len(batch) else "") + ",".join(batch))
                batch = []
        if batch:
            f.write(("," if count > len(batch) else "") + ",".join(batch))
        f.write("]}\n")
    return count
