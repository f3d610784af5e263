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
    "peak_tflops_fp32",
    "peak_tflops_tf32",
    "peak_tflops_bf16",
    "peak_tflops_fp16",
    "memory_gib",
    "memory_gbps",
    "intra_node_gbps",
    "compute_efficiency",
    "compute_units",
    "peer_to_peer",
    "link_efficiency",
)
CONFIDENCES = {"high", "medium-high", "medium", "low"}


def test_catalog_holds_the_reference_chips() -> None:
    names = catalog_names()
    real = [n for n in names if not n.startswith("cpu-")]
    assert len(real) >= 17
    # docs/references.md's table, by the names a user would type.
    for wanted in (
        "a100-80g", "a100-40g", "h100", "h200", "h800", "h20", "l40s", "rtx4090", "rtx3090",
        "v100", "t4", "ascend-910b", "mi250x", "mi300x", "gaudi2", "gaudi3", "bi150",
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
    for key in ("compute_efficiency", "link_efficiency"):
        assert 0 < entry[key]["value"] <= 1, (name, key)
    for key in ("peak_tflops_fp32", "peak_tflops_tf32", "peak_tflops_bf16", "peak_tflops_fp16"):
        value = entry[key]["value"]
        # No stored peak is a sparse figure: the densest real chip (Gaudi3) is below 2000.
        assert value is None or 0 < value < 2000, (name, key, value)
    peaks = [entry[k]["value"] for k in ("peak_tflops_fp32", "peak_tflops_tf32")]
    half = entry["peak_tflops_fp16"]["value"] or entry["peak_tflops_bf16"]["value"]
    for value in peaks:  # fp32 and TF32 never beat the 16-bit matrix rate
        assert value is None or value <= half, (name, peaks, half)
    units = entry["compute_units"]["value"]
    assert units is None or (isinstance(units, int) and 10 <= units <= 400), (name, units)
    assert isinstance(entry["peer_to_peer"]["value"], bool), name


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
    assert h800.achievable_flops("bf16") == pytest.approx(989e12 * 0.80)


def test_v100_has_no_bf16_and_says_what_to_do() -> None:
    v100 = lookup("v100")
    assert v100.peak_flops("fp16") == pytest.approx(125e12)
    with pytest.raises(PolychipError, match="fp16") as info:
        v100.peak_flops("bf16")
    assert "v100" in str(info.value) and "peak_tflops_bf16" in str(info.value)


@pytest.mark.parametrize(
    ("chip", "fp32", "tf32", "bf16"),
    [
        ("v100", 15.7, None, None),  # Volta: no TF32, no bf16
        ("t4", 8.1, None, None),  # Turing: neither
        ("a100", 19.5, 156, 312),
        ("rtx3090", 35.6, 35.6, 71),  # GeForce: fp32-accumulate tensor rates halved
        ("h100", 67, 494.7, 989.4),
        ("h200", 67, 494.7, 989.4),  # H100 compute ...
    ],
)  # fmt: skip
def test_every_precision_has_its_peak_or_a_clear_error(chip, fp32, tf32, bf16) -> None:
    acc = lookup(chip)
    for precision, want in (("fp32", fp32), ("tf32", tf32), ("bf16", bf16)):
        if want is None:
            with pytest.raises(PolychipError, match=f"{chip}.*{precision}.*--precision"):
                acc.peak_flops(precision)
        else:
            assert acc.peak_flops(precision) == pytest.approx(want * 1e12)


def test_h200_and_geforce_links() -> None:
    h200 = lookup("h200")  # ... with 141 GB of HBM3e at 4.8 TB/s (H200 datasheet)
    assert (h200.memory_bytes, h200.memory_bw_bytes_per_s) == (141 * GIB, 4800e9)
    assert h200.peer_to_peer and h200.link_bw_bytes_per_s == pytest.approx(450e9)
    # GeForce cards exchange through host memory; datacenter PCIe cards have P2P.
    assert not lookup("rtx4090").peer_to_peer and not lookup("rtx3090").peer_to_peer
    assert lookup("l40s").peer_to_peer and lookup("t4").peer_to_peer
    assert lookup("a100").compute_units == 108 and lookup("h100").compute_units == 132


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
