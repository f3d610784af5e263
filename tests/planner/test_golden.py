"""Golden plans: the summary of small inputs' plans, stored and compared, so any change to
the planner or the cost model that changes a plan is seen. Regenerate with
`POLYCHIP_REGEN_GOLDEN=1 pytest tests/planner/test_golden.py` and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polychip.planner import plan_job
from polychip.planner.summary import summary_text
from polychip.spec.cluster import load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "cpu-test-tiny": ("cpu-test.yaml", "tiny", 16, 256),
    "h800-910b-llama3-70b": ("h800-910b.yaml", "llama3-70b", 512, 4096),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_plan_summary(name: str) -> None:
    cluster_file, model, batch, seq = CASES[name]
    plan = plan_job(
        load_cluster(ROOT / "examples" / "clusters" / cluster_file),
        load_model(model),
        TrainingJob(batch, seq),
    )
    got = summary_text(plan)
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("POLYCHIP_REGEN_GOLDEN"):
        path.write_text(got)
    assert path.exists(), f"{path} is missing: generate it with POLYCHIP_REGEN_GOLDEN=1, review it"
    assert got == path.read_text(), f"plan changed: regenerate {path} if intended"
