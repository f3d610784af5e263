"""`polychip simulate PLAN.json`, end to end: tables, pictures, and bad plan files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from polychip.cli import main
from polychip.plan import plan_to_dict, save_plan

from .plans import mixed_plan


@pytest.fixture(scope="module")
def plan_dict() -> dict:
    return plan_to_dict(mixed_plan())


def test_prints_simulated_beside_analytic_and_writes_pictures(tmp_path, capsys):
    path = tmp_path / "plan.json"
    save_plan(mixed_plan(), path)
    trace, png = tmp_path / "t.json", tmp_path / "t.png"
    assert main(["simulate", str(path), "--trace", str(trace), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "simulated" in out and "analytic (cost model)" in out
    assert "critical path:" in out and "ascend-910b" in out
    assert "overlapped with backward" in out
    assert json.loads(trace.read_text())["traceEvents"]
    assert png.stat().st_size > 1000


def test_no_overlap_is_said(tmp_path, capsys):
    path = tmp_path / "plan.json"
    save_plan(mixed_plan(), path)
    assert main(["simulate", str(path), "--no-overlap"]) == 0
    assert "not overlapped" in capsys.readouterr().out


def _broken(plan_dict: dict, edit) -> dict:
    data = json.loads(json.dumps(plan_dict))
    edit(data)
    return data


def _set(path, value):
    def edit(data):
        *keys, last = path
        for k in keys:
            data = data[k]
        data[last] = value

    return edit


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a JSON plan file"),
        ('{"hello": 1}', "not a polychip plan"),
        (_set(["schema_version"], 2), "schema_version 2 is not supported"),
        (_set(["replicas", 0, "stages", 1, "layers"], [13, 32]), "replicas[0].stages[1].layers"),
        (
            _set(["replicas", 1, "stages", 0, "local_devices"], [3, 4, 5, 6]),
            "replicas[1].stages[0].local_devices: device 3 of node 0 is already used",
        ),
        (_set(["replicas", 0, "batch_size"], "x"), "replicas[0].batch_size"),
    ],
)
def test_a_bad_plan_file_exits_2_naming_the_field(tmp_path, capsys, plan_dict, content, message):
    path = tmp_path / "bad.json"
    if callable(content):
        path.write_text(json.dumps(_broken(plan_dict, content)))
    else:
        path.write_text(content)
    assert main(["simulate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polychip simulate: error: ") and message in err
    assert "Traceback" not in err


def test_a_missing_plan_file_exits_2(tmp_path, capsys):
    assert main(["simulate", str(tmp_path / "none.json")]) == 2
    assert "plan file not found" in capsys.readouterr().err


def test_the_command_module_imports_no_matplotlib():
    code = (
        "import sys; from polychip.cli import build_parser; build_parser();"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at start-up'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
