"""Profile files: a hand-written one loads; every bad input names the file, the key and the
fix; the documented example is a valid profile; a profile measured for another model or
precision is refused when used."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from polychip.spec.errors import SpecError
from polychip.spec.job import TrainingJob
from polychip.spec.model import load_model
from polychip.spec.profile_file import load_profile, load_profiles, profile_to_dict

from .profile_data import tiny_profile, write

DOCS = Path(__file__).resolve().parents[2] / "docs" / "profile-format.md"


def test_a_hand_written_profile_loads_with_its_figures(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, tiny_profile()))
    assert p.chip == "cpu-fast" and p.precision == "bf16" and p.model.hidden_size == 64
    assert [(b.tp, b.micro_batch, b.tokens) for b in p.blocks][:2] == [(1, 1, 128), (1, 4, 512)]
    assert p.blocks[0].recompute_bwd_s == 0.031 and p.blocks[2].recompute_bwd_s is None
    assert p.optimizer_s_per_param == 2e-9 and len(p.d2h) == 1 and p.h2d == ()
    ar = p.collectives[1]  # 1 MB all-reduce over 2 chips in 1 ms: 2 (p - 1) / p x 1 GB/s
    assert ar.bus_bytes_per_s == pytest.approx(1e9)
    assert p.file == str(tmp_path / "profile.json")


def test_catalog_aliases_resolve_and_a_round_trip_keeps_every_figure(tmp_path: Path) -> None:
    data = tiny_profile(chip="H100-SXM")
    p = load_profile(write(tmp_path, data))
    assert p.chip == "h100"
    again = load_profile(write(tmp_path, profile_to_dict(p), "again.json"))
    assert again == p


def test_yaml_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tiny_profile()))
    assert load_profile(path).blocks == load_profile(write(tmp_path, tiny_profile())).blocks


def _broken(tmp_path: Path, change) -> str:
    data = copy.deepcopy(tiny_profile())
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as err:
        load_profile(path)
    assert str(path) in str(err.value)
    return str(err.value)


def _set(path: str, value: Any):
    def change(data: dict) -> None:
        *head, last = re.split(r"[.\[\]]+", path.strip("]"))
        node = data
        for part in head:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return change


_DELETE = object()


@pytest.mark.parametrize(("key", "value", "says"), [
    ("schema_version", 2, "is not supported"),
    ("blocks[1].fwd_s", _DELETE, "missing; add it"),
    ("blocks[0].bwd_s", -0.5, "positive"),
    ("blocks[2].fwd_s", float("nan"), "NaN or infinite"),
    ("embedding[0].bwd_s", float("inf"), "NaN or infinite"),
    ("collectives[0].seconds", 0, "positive"),
    ("p2p[1].message_bytes", -3, "positive"),
    ("optimizer.seconds_per_param", _DELETE, "missing"),
    ("corrections.compute", -1.0, "positive"),
    ("model.hidden_size", _DELETE, "missing"),
    ("precision", "fp8", "fp32"),
    ("blocks[0].flops", 3, "unknown key"),
    ("blocks[3].tp", 1, "already blocks[1]"),
])
def test_each_bad_figure_names_file_key_and_fix(tmp_path: Path, key: str, value: Any,
                                                says: str) -> None:
    message = _broken(tmp_path, _set(key, value))
    shown = key if key != "blocks[3].tp" else "blocks[3]"
    assert f": {shown}: " in message and says in message, message
    assert "polychip profile" in message or "docs/profile-format.md" in message, message


def test_not_a_profile_and_unreadable_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a polychip profile"):
        load_profile(write(tmp_path, {"schema_version": 1}))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SpecError, match="not a JSON"):
        load_profile(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_profile(tmp_path / "missing.json")


def test_two_profiles_of_one_chip_are_refused(tmp_path: Path) -> None:
    a = write(tmp_path, tiny_profile(), "a.json")
    b = write(tmp_path, tiny_profile(), "b.json")
    with pytest.raises(SpecError, match=r"b\.json: chip: 'cpu-fast' is also the chip of .*a\.json"):
        load_profiles([a, b])


def test_a_profile_of_another_model_or_precision_is_refused_when_used(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, tiny_profile()))
    tiny, job = load_model("tiny"), TrainingJob(global_batch=8, seq_len=128)
    p.check_applies_to(tiny, job)  # the model and precision it was measured for
    with pytest.raises(SpecError, match=r"profile\.json: model\.hidden_size: 64 but .*4096"):
        p.check_applies_to(load_model("llama2-7b"), job)
    with pytest.raises(SpecError, match=r"precision: 'bf16' but the job runs precision 'fp32'"):
        p.check_applies_to(tiny, TrainingJob(global_batch=8, seq_len=128, precision="fp32"))
    with pytest.raises(SpecError, match=r"attention: 'fused' but"):
        p.check_applies_to(tiny, TrainingJob(global_batch=8, seq_len=128, attention="eager"))


def test_the_documented_example_is_a_valid_profile(tmp_path: Path) -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks, "docs/profile-format.md shows a JSON example"
    p = load_profile(write(tmp_path, json.loads(blocks[0])))
    assert p.blocks and p.collectives and p.p2p


def test_host_work_the_ends_bytes_and_the_fixed_memory_load_and_round_trip(
        tmp_path: Path) -> None:
    data = tiny_profile()
    data["host"] = {"step_s": 1e-4, "micro_batches": [
        {"micro_batch": 1, "seq_len": 128, "seconds": 2e-4},
        {"micro_batch": 4, "seq_len": 128, "seconds": 0.0}]}  # a difference: may be 0
    data["head"][0]["activation_bytes"] = 70_000
    data["embedding"][1]["activation_bytes"] = 4_096
    data["fixed_memory_bytes"] = 300 * 2**20
    p = load_profile(write(tmp_path, data))
    assert p.host_step_s == 1e-4 and [(h.tokens, h.seconds) for h in p.host] == [
        (128, 2e-4), (512, 0.0)]
    assert (p.head[0].activation_bytes, p.head[1].activation_bytes) == (70_000, None)
    assert p.embedding[1].activation_bytes == 4_096 and p.fixed_memory_bytes == 300 * 2**20
    assert load_profile(write(tmp_path, profile_to_dict(p), "again.json")) == p
    dup = copy.deepcopy(data)
    dup["host"]["micro_batches"][1]["micro_batch"] = 1
    with pytest.raises(SpecError, match=r"host.micro_batches\[1\]: .*already"):
        load_profile(write(tmp_path, dup, "dup.json"))
    bad = copy.deepcopy(data)
    bad["host"]["step_s"] = -1.0
    with pytest.raises(SpecError, match=r"host.step_s: "):
        load_profile(write(tmp_path, bad, "bad.json"))
    head = copy.deepcopy(data)
    head["head"][0]["recompute_bwd_s"] = 0.1  # blocks only
    with pytest.raises(SpecError, match=r"head\[0\].recompute_bwd_s: unknown key"):
        load_profile(write(tmp_path, head, "head.json"))
