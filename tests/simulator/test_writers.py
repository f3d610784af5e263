"""Chrome trace and PNG timeline of a simulated step."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

from polychip.simulator import simulate
from polychip.simulator.picture import write_png
from polychip.simulator.trace import write_trace

from .plans import mixed_plan


def test_the_trace_is_chrome_json_with_one_track_per_device_and_per_link(tmp_path):
    plan = mixed_plan()
    result = simulate(plan)
    path = tmp_path / "step.json"
    write_trace(result, path)
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    threads = [e for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    devices = [e for e in threads if e["pid"] <= len(plan.replicas)]
    assert sorted(e["tid"] for e in devices) == list(range(plan.world_size))
    assert devices[0]["args"]["name"] == "r0 · stage 0 tp0 · h800 · node 0"
    links = [e for e in threads if e["pid"] == len(plan.replicas) + 1]
    names = {e["args"]["name"] for e in links}
    assert "node 0 → node 2 · cross-island" in names  # replica 0's activations
    assert "node 0 → node 3 · cross-island" in names  # its alike replica 1's
    spans = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    by_track = defaultdict(list)
    for e in spans:
        by_track[(e["pid"], e["tid"])].append(e)
    assert {k for k in by_track if k[0] <= len(plan.replicas)} == {
        (e["pid"], e["tid"]) for e in devices
    }
    for track in by_track.values():  # spans on one track never overlap
        track.sort(key=lambda e: e["ts"])
        for a, b in itertools.pairwise(track):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-6
    assert {"compute", "wait", "allreduce", "optimizer"} <= {e["cat"] for e in spans}
    assert doc["otherData"]["step_time_s"] == result.step_time_s


def test_the_png_is_written(tmp_path):
    path = tmp_path / "step.png"
    write_png(simulate(mixed_plan()), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
