"""Can the runtime execute a plan? `polychip train --check` and the refusal before any process
group starts, with explicit capability tables (the runtime's own table widens as features
land; these tests do not depend on it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import polychip.plan.capabilities as capabilities
import polychip.runtime.executable as executable
import polychip.runtime.launch as launch
from polychip.cli import main
from polychip.plan import Plan, save_plan
from polychip.plan.capabilities import Capabilities
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.executable import (
    check_executable,
    executable_problems,
)
from polychip.runtime.topology import rank_roles

from .plans import TINY4, cpu_test_plan, hybrid_plan
from .test_topology import _npu_plan

# What the runtime executed when these tests were written: fp32, no SP or vocab-parallel
# head, no overlapped gradient sync, no ZeRO-1.
NARROW = Capabilities(
    precisions=frozenset({"fp32"}), attention=frozenset({"fused"}),
    sequence_parallel=frozenset({False}), vocab_parallel=frozenset({False}),
    overlap_p2p=frozenset({True}), overlap_grad_sync=frozenset({False}),
    grad_reduce_dtypes=frozenset({"fp32"}), zero_stages=frozenset({0}),
    schedules=frozenset({"1f1b", "gpipe", "interleaved-1f1b"}),
    recompute=frozenset({False, True}), model_families=frozenset({"llama"}),
    mlp=frozenset({"swiglu"}), tied_embeddings_across_stages=False, empty_stages=False)
WIDE = dataclasses.replace(
    NARROW, precisions=frozenset({"fp32", "bf16"}), sequence_parallel=frozenset({False, True}),
    vocab_parallel=frozenset({False, True}), overlap_grad_sync=frozenset({False, True}))
FP32_JOB = dict(precision="fp32", sequence_parallel=False, vocab_parallel=False,
                overlap_grad_sync=False)


def _with_job(plan: Plan, **job: object) -> Plan:
    return dataclasses.replace(plan, job=dataclasses.replace(plan.job, **job))


def test_problems_name_the_field_and_the_fix() -> None:
    plan = hybrid_plan()  # TP 2 on a last stage: SP and the vocabulary-parallel head apply
    problems = executable_problems(plan, NARROW)
    assert ("job.precision = bf16: not executed by polychip's runtime; set job.precision to "
            "one of: fp32") in problems
    assert any(p.startswith("job.sequence_parallel = true") for p in problems)
    assert any(p.startswith("job.vocab_parallel = true") for p in problems)
    assert executable_problems(_with_job(plan, **FP32_JOB), NARROW) == []
    assert executable_problems(plan, WIDE) == []
    odd = dataclasses.replace(plan, model=dataclasses.replace(TINY4, num_kv_heads=1))
    assert executable_problems(odd, WIDE) == [
        "replicas[0].stages[1]: tensor-parallel degree 2 does not divide the model's "
        "num_kv_heads=1: use a TP degree that divides num_heads, num_kv_heads and "
        "ffn_hidden_size"]


def test_roles_are_refused_before_any_group_by_the_table_given() -> None:
    plan = hybrid_plan()
    with pytest.raises(RuntimeSetupError, match=r"cannot execute this plan: job.precision = "
                                                r"bf16.*set job.precision to one of: fp32"):
        rank_roles(plan, emulate=True, caps=NARROW)
    with pytest.raises(RuntimeSetupError, match=r"job\.precision"):
        check_executable(plan, NARROW)
    assert len(rank_roles(plan, emulate=True, caps=WIDE)) == 4


def test_the_runtime_refuses_by_its_own_table(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = hybrid_plan()
    rank_roles(plan, emulate=True)  # the job's defaults are what the runtime executes
    monkeypatch.setattr(executable, "RUNTIME", NARROW)
    with pytest.raises(RuntimeSetupError, match=r"job\.precision = bf16"):
        rank_roles(plan, emulate=True)
    gelu_model = dataclasses.replace(TINY4, mlp="gelu", activation="gelu")
    gelu = dataclasses.replace(plan, model=gelu_model)
    with pytest.raises(RuntimeSetupError, match=r"model\.mlp = gelu"):
        rank_roles(gelu, emulate=True)


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """--check and the refusals start no process: launching fails the test."""
    def launched(*args: object, **kwargs: object) -> None:
        raise AssertionError("a process was started")
    monkeypatch.setattr(launch, "launch_local", launched)
    monkeypatch.setattr(capabilities, "RUNTIME", NARROW)


@pytest.mark.usefixtures("no_launch")
def test_check_exits_0_when_the_runtime_can_execute_the_plan(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plan.json"
    save_plan(_with_job(cpu_test_plan(), **FP32_JOB), path)
    assert main(["train", str(path), "--check"]) == 0  # CPU chips: this machine has them
    assert "can execute every feature" in capsys.readouterr().out
    save_plan(_with_job(_npu_plan(), **FP32_JOB), path)
    assert main(["train", str(path), "--check", "--emulate"]) == 0


@pytest.mark.usefixtures("no_launch")
def test_check_exits_2_naming_each_field_and_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plan.json"
    save_plan(hybrid_plan(), path)
    assert main(["train", str(path), "--check", "--emulate"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert "cannot execute" in lines[0] and "emulated" in lines[0]
    assert ("  - job.precision = bf16: not executed by polychip's runtime; set job.precision "
            "to one of: fp32") in lines
    assert len(lines) == 1 + 4  # precision, SP, vocab-parallel, overlapped gradient sync
    save_plan(_with_job(_npu_plan(), **FP32_JOB), path)
    assert main(["train", str(path), "--check"]) == 2  # without --emulate: device types
    err = capsys.readouterr().err
    assert "ranks 0, 1 play chip 'fake-910' on device type 'npu'" in err
    assert "--emulate" in err
