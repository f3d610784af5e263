"""A run's metrics file (`polychip train --metrics`, JSON lines, format version 3;
docs/runtime.md, "Metrics") read for calibration: validated, and checked against the plan the
run trained, without torch. What is read of each record: who (rank, replica, stage, TP rank,
chip, layers), the measured phases, the peak memory and how it was measured, and whether the
chips were emulated."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polychip.plan.plan import Plan
from polychip.plan.segments import chunk_layers
from polychip.spec.errors import SpecError, key_path

METRICS_VERSION = 3  # runtime.metrics.METRICS_VERSION (the runtime's; read here without torch)
PHASES = ("compute_s", "pipeline_wait_s", "grad_sync_s", "optimizer_s", "idle_s")
RETRAIN = "give the plan this run trained (the PLAN.json passed to `polychip train`)"


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # the runtime adds fields

    version: int
    step: int = Field(ge=0)
    rank: int = Field(ge=0)
    replica: int = Field(ge=0)
    stage: int = Field(ge=0)
    tp_rank: int = Field(ge=0)
    chip: str
    layers: list[tuple[int, int]]
    seconds: float = Field(ge=0)
    compute_s: float = Field(ge=0)
    pipeline_wait_s: float = Field(ge=0)
    grad_sync_s: float = Field(ge=0)
    optimizer_s: float = Field(ge=0)
    idle_s: float = Field(ge=0)
    peak_memory_bytes: int = Field(ge=0)
    memory_kind: str
    emulated: bool


@dataclass(frozen=True)
class RunRecord:
    """One rank's step, measured."""

    step: int
    rank: int
    replica: int
    stage: int
    tp_rank: int
    chip: str
    layers: tuple[tuple[int, int], ...]
    seconds: float
    phases: dict[str, float]  # PHASES -> measured seconds
    peak_memory_bytes: int
    memory_kind: str  # cpu-tensors or device-allocator (runtime.memory)
    emulated: bool


def load_run_metrics(path: str | Path) -> tuple[RunRecord, ...]:
    """Every record of a metrics file; a malformed line names the file, the line and key."""
    file = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SpecError(f"cannot read the metrics: {exc.strerror}; give the file "
                        f"`polychip train --metrics` wrote", file=file) from None
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        out.append(_record(line, file, i))
    if not out:
        raise SpecError("no records; give the file `polychip train --metrics` wrote "
                        "(a run of at least one step)", file=file)
    return tuple(out)


def _record(line: str, file: str, number: int) -> RunRecord:
    where = f"line {number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpecError(f"not a JSON line ({exc.msg}); give the file `polychip train "
                        f"--metrics` wrote", file=file, key=where) from None
    version = data.get("version") if isinstance(data, dict) else None
    if version != METRICS_VERSION:
        raise SpecError(f"metrics format version {version!r}, this polychip reads "
                        f"{METRICS_VERSION}: re-run the training with this polychip",
                        file=file, key=f"{where}.version")
    try:
        raw = _Record.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpecError(f"{err['msg']}; the file is not what `polychip train --metrics` "
                        f"writes (docs/runtime.md, \"Metrics\")", file=file,
                        key=f"{where}.{key_path(tuple(err['loc']))}") from None
    return RunRecord(raw.step, raw.rank, raw.replica, raw.stage, raw.tp_rank, raw.chip,
                     tuple(tuple(c) for c in raw.layers), raw.seconds,  # type: ignore[misc]
                     {p: getattr(raw, p) for p in PHASES}, raw.peak_memory_bytes,
                     raw.memory_kind, raw.emulated)


def check_matches_plan(records: Sequence[RunRecord], plan: Plan, file: str) -> None:
    """Raise SpecError naming what differs when the run's ranks are not the plan's: their
    number, and each rank's replica, stage, TP rank, chip and layers."""
    ranks = {r.rank: r for r in records}
    mine = plan.ranks()
    if len(ranks) != len(mine):
        raise SpecError(f"the run has {len(ranks)} rank(s), the plan {len(mine)} "
                        f"({len(plan.replicas)} replica(s)); {RETRAIN}", file=file)
    v = plan.virtual_stages if plan.schedule == "interleaved-1f1b" else 1
    chunks = [chunk_layers(rep, v) for rep in plan.replicas]
    for info in mine:
        got = ranks.get(info.rank)
        if got is None:
            raise SpecError(f"no record of plan rank {info.rank}; {RETRAIN}", file=file)
        want = {"replica": info.replica, "stage": info.stage, "tp_rank": info.tp_rank,
                "chip": info.chip, "layers": chunks[info.replica][info.stage]}
        for key, value in want.items():
            if getattr(got, key) != value:
                raise SpecError(f"rank {info.rank} ran {key} {_show(getattr(got, key))}, the "
                                f"plan gives it {_show(value)}; {RETRAIN}", file=file)


def _show(value: object) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return ", ".join(f"[{a}, {b})" for a, b in value)
    return repr(value)


def check_measured(records: Sequence[RunRecord], file: str) -> None:
    """Emulated chips' figures are the cost model's own: nothing to calibrate against."""
    if any(r.emulated for r in records):
        raise SpecError("the run's chips were emulated (`polychip train --emulate`): its "
                        "compute phases last what the cost model says, so they would "
                        "calibrate the cost model against itself; calibrate a real run "
                        "(`polychip train PLAN.json --metrics OUT.jsonl`, without --emulate)",
                        file=file)


def steady(records: Sequence[RunRecord], skip: int, file: str) -> tuple[RunRecord, ...]:
    """The records after the first `skip` steps (warm-up)."""
    steps = sorted({r.step for r in records})
    if skip < 0 or skip >= len(steps):
        raise SpecError(f"--skip {skip}: the run has {len(steps)} step(s); skip fewer than "
                        f"that (and at least 0), or train more steps", file=file)
    kept = set(steps[skip:])
    return tuple(r for r in records if r.step in kept)

