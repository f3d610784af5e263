"""`polychip validate` and `polychip catalog`: a summary on success; on bad input exit
code 2 and exactly one line on stderr (file, key path, rule), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from polychip.cli import main
from polychip.spec.accelerators import catalog_names

SRC = Path(__file__).resolve().parents[2] / "src"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"

GOOD = """\
name: h800-plus-910b
nodes:
  - {chip: h800, count: 2, chips_per_node: 8, nic_gbps: 400}
  - {chip: Ascend_910B, count: 4, chips_per_node: 8, nic_gbps: 200}
  - {chip: bi150, count: 1, chips_per_node: 4, nic_gbps: 100}
network: {kind: roce, latency_us: 10}
links:
  - {between: [h800x8, 1], gbps: 100, latency_us: 30}
chips:
  bi150: {memory_gib: 32}
"""

BAD = {
    "unknown-key": ("nodes:\n  - {chip: h800, count: 1, nic_gbps: 1, colour: red}\n",
                    "nodes[0].colour", "unknown key"),
    "zero-count": ("nodes:\n  - {chip: h800, count: 1, nic_gbps: 1}\n"
                   "  - {chip: h800, count: 0, nic_gbps: 1}\n", "nodes[1].count", "greater than 0"),
    "negative-count": ("nodes:\n  - {chip: h800, count: -3, nic_gbps: 1}\n", "nodes[0].count",
                       "greater than 0"),
    "no-nodes": ("name: x\n", "nodes", "required"),
    "unknown-chip": ("nodes:\n  - {chip: h900, count: 1, nic_gbps: 1}\n", "nodes[0].chip",
                     "closest known: h800"),
    "missing-figure": ("nodes:\n  - {chip: bi150, count: 1, nic_gbps: 1}\n", "nodes[0].chip",
                       "memory_gib"),
    "bad-link": ("nodes:\n  - {chip: h800, count: 1, nic_gbps: 100}\n"
                 "links:\n  - {between: [0, h900x8], gbps: 10}\n", "links[0].between[1]",
                 "no node group is labelled 'h900x8'"),
    "not-a-mapping": ("- just\n- a list\n", "", "YAML mapping"),
    "malformed": ("nodes:\n  - chip: h800\n    count: 2\n   nic_gbps: 3\n", "line 4",
                  "not valid YAML"),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich would otherwise truncate names at 80


def test_validate_summarises_a_good_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "is valid" in out and "h800-plus-910b" in out
    for text in ("h800", "ascend-910b", "bi150", "nvidia/nccl", "huawei/hccl", "iluvatar/ixccl"):
        assert text in out
    assert "52 chips in 3 island(s)" in out  # 16 + 32 + 4
    assert "link h800x8 <-> ascend-910bx8: 100 Gb/s, 30 µs (measured)" in out


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_validates(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(example)]) == 0
    assert "is valid" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "key", "rule"), BAD.values(), ids=BAD.keys())
def test_bad_cluster_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, rule: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    prefix = f"polychip validate: error: {path}: " + (f"{key}: " if key else "")
    assert err.startswith(prefix), err
    assert rule in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content", [b"\x00\xff\xfe\x80", None], ids=["binary", "missing"])
def test_unreadable_cluster_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None
) -> None:
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_bytes(content)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_validate_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD["zero-count"][0])
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run(
        [sys.executable, "-m", "polychip", "validate", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"polychip validate: error: {path}: nodes[1].count: Input should be greater than 0\n"
    )


def test_catalog_lists_every_chip(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    for name in catalog_names():
        assert name in out
    assert "989.4" in out and "1,979" not in out  # the dense H100 peak, not the sparse one
    assert "0.05" in out  # a small peak is not rounded away
    assert "chips:" in out  # how to declare an unknown chip
    # precisions and links: the H100's dense TF32 peak, GeForce cards staging through host
    assert "494.7" in out and out.count("no (host)") == 2


def test_catalog_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "--sources"]) == 0
    out = capsys.readouterr().out
    assert "memory_gib = None (low): not found" in out  # BI150 says why it has no figure
    assert out.count("peak_tflops_bf16 = ") == len(catalog_names())
    assert out.count("peer_to_peer = ") == len(catalog_names())
    assert "peak_tflops_tf32 = None (high): NVIDIA V100 datasheet: Volta has no TF32" in out
    # money and energy: every chip says its power and rent, with source and date or why not
    chips = len(catalog_names())
    assert out.count("board_power_w = ") == out.count("rent_usd_per_hour = ") == chips
    assert "board_power_w = 400 (high, 2021): https://www.nvidia.com/" in out
    assert "(a number or [low, high])" in out  # not eaten as console markup
