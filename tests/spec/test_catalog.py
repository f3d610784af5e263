"""The shipped accelerator catalog: coverage, provenance, aliases, unknown names, gaps."""

from __future__ import annotations

import pytest
import yaml

from polychip.spec.accelerators import (
    GIB,
    INLINE_EXAMPLE,
    catalog_entry,
    catalog_names,
    closest_names,
    lookup,
    resolve_name,
)
from polychip.spec.cluster import cluster_from_dict
from polychip.spec.errors import PolychipError, SpecError

FIGURES = (
    "peak_tflops_bf16",
    "peak_tflops_fp16",
    "memory_gib",
    "memory_gbps",
    "intra_node_gbps",
    "compute_efficiency",
)
CONFIDENCES = {"high", "medium-high", "medium", "low"}


def test_catalog_holds_the_fifteen_reference_chips() -> None:
    names = catalog_names()
    real = [n for n in names if not n.startswith("cpu-")]
    assert len(real) >= 15
    # REFERENCES.md's table, by the names a user would type.
    for wanted in (
        "a100-80g", "a100-40g", "h100", "h800", "h20", "l40s", "rtx4090", "v100", "t4",
        "ascend-910b", "mi250x", "mi300x", "gaudi2", "gaudi3", "bi150",
    ):  # fmt: skip
        assert resolve_name(wanted) is not None, wanted


@pytest.mark.parametrize("name", catalog_names())
def test_every_figure_has_a_source_and_a_confidence(name: str) -> None:
    entry = catalog_entry(name)
    for key in FIGURES:
        fig = entry[key]
        assert isinstance(fig, dict), f"{name}.{key} is a bare number without provenance"
        assert {"value", "source", "confidence"} <= set(fig), f"{name}.{key}"
        assert len(str(fig["source"]).strip()) > 10, f"{name}.{key}: no real source"
        assert fig["confidence"] in CONFIDENCES, f"{name}.{key}: {fig['confidence']!r}"
    for key in ("vendor", "device_type", "torch_backend", "collective_library"):
        assert entry.get(key), f"{name} has no {key}"


@pytest.mark.parametrize("name", catalog_names())
def test_catalog_figures_are_plausible(name: str) -> None:
    entry = catalog_entry(name)
    eff = entry["compute_efficiency"]["value"]
    assert 0 < eff <= 1
    for key in ("peak_tflops_bf16", "peak_tflops_fp16"):
        value = entry[key]["value"]
        # No stored peak is a sparse figure: the densest real chip (Gaudi3) is below 2000.
        assert value is None or 0 < value < 2000, (name, key, value)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("h800", "h800"),
        ("H800-SXM", "h800"),
        ("h800_sxm5", "h800"),
        ("ascend-910b", "ascend-910b"),
        ("910b", "ascend-910b"),
        ("Ascend_910B", "ascend-910b"),
        ("Ascend 910B", "ascend-910b"),
        (" ATLAS-800T-A2 ", "ascend-910b"),
        ("a100", "a100-80g"),
        ("4090", "rtx4090"),
        ("MI300X", "mi300x"),
    ],
)
def test_aliases_resolve_ignoring_case_underscores_and_spaces(alias: str, canonical: str) -> None:
    assert resolve_name(alias) == canonical
    assert lookup(alias).name == canonical


def test_every_alias_is_unambiguous() -> None:
    seen: dict[str, str] = {}
    for name in catalog_names():
        for alias in catalog_entry(name).get("aliases", []):
            key = alias.lower().replace("_", "-")
            assert seen.setdefault(key, name) == name, f"alias {alias} of {name} and {seen[key]}"
            assert key not in catalog_names() or key == name


def test_unknown_name_lists_close_names_and_the_inline_example() -> None:
    with pytest.raises(SpecError) as info:
        lookup("h900")
    msg = str(info.value)
    assert "h900" in msg
    assert "h800" in msg and "h100" in msg  # closest known names
    assert "chips:" in msg and INLINE_EXAMPLE in msg
    assert "\n" not in msg  # the CLI prints it as one line
    assert closest_names("ascend910") == ["ascend-910b"]


def test_inline_example_in_the_message_is_itself_a_valid_cluster_chip() -> None:
    chips = yaml.safe_load(INLINE_EXAMPLE)["chips"]
    cluster = cluster_from_dict(
        {"nodes": [{"chip": "acme-npu", "count": 1, "nic_gbps": 100}], "chips": chips}
    )
    assert cluster.groups[0].chip.peak_flops("bf16") == pytest.approx(200e12)


def test_sparse_peaks_are_not_stored_as_dense() -> None:
    # H100 SXM: 989.4 dense, 1,979 with 2:4 sparsity (datasheet).
    assert lookup("h100").peak_flops("bf16") < 1000e12
    assert lookup("a100").peak_flops("bf16") == pytest.approx(312e12)
    assert lookup("mi300x").peak_flops("bf16") < 1400e12


def test_units_are_converted_to_si() -> None:
    h800 = lookup("h800")
    assert h800.memory_bytes == 80 * GIB
    assert h800.memory_bw_bytes_per_s == pytest.approx(3350e9)
    # Datasheet NVLink 400 GB/s is both directions summed: 200e9 B/s each way.
    assert h800.link_bw_bytes_per_s == pytest.approx(200e9)
    assert h800.achievable_flops("bf16") == pytest.approx(989e12 * 0.62)


def test_v100_has_no_bf16_and_says_what_to_do() -> None:
    v100 = lookup("v100")
    assert v100.peak_flops("fp16") == pytest.approx(125e12)
    with pytest.raises(PolychipError, match="fp16") as info:
        v100.peak_flops("bf16")
    assert "v100" in str(info.value) and "peak_tflops_bf16" in str(info.value)


def test_a_precision_without_a_peak_is_an_error_not_the_fp16_figure() -> None:
    with pytest.raises(PolychipError, match="fp32"):
        lookup("h100").peak_flops("fp32")


def test_bi150_memory_is_unknown_so_a_cluster_must_supply_it() -> None:
    nodes = [{"chip": "bi150", "count": 1, "chips_per_node": 8, "nic_gbps": 100}]
    with pytest.raises(SpecError) as info:
        cluster_from_dict({"nodes": nodes}, file="c.yaml")
    msg = str(info.value)
    assert msg.startswith("c.yaml: nodes[0].chip:")
    assert "memory_gib" in msg and "chips:" in msg
    cluster = cluster_from_dict({"nodes": nodes, "chips": {"bi150": {"memory_gib": 32}}})
    chip = cluster.groups[0].chip
    assert chip.name == "bi150"
    assert chip.memory_bytes == 32 * GIB
    assert chip.peak_flops("fp16") == pytest.approx(196e12)  # the rest still from the catalog
    assert chip.figures["memory_gib"].confidence == "user"
    assert chip.figures["peak_tflops_fp16"].confidence == "medium"


def test_islands_follow_the_collective_library() -> None:
    islands = {n: lookup(n).island for n in ("h800", "h100", "ascend-910b", "mi300x", "gaudi2")}
    assert islands["h800"] == islands["h100"] == "nvidia/nccl"
    assert len(set(islands.values())) == 4  # NCCL, HCCL, RCCL, Habana's HCCL all differ
    # Habana's backend is also *named* hccl, but it is not Huawei's library.
    assert lookup("gaudi2").torch_backend == lookup("ascend-910b").torch_backend == "hccl"
    assert lookup("gaudi2").island != lookup("ascend-910b").island
