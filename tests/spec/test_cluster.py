"""Cluster files: the issue's example shape, bad input naming file and key path, units,
inline chips, islands, and the dict round trip used by plan files."""

from __future__ import annotations

from pathlib import Path

import pytest

from polychip.spec.accelerators import GIB, lookup
from polychip.spec.cluster import cluster_from_dict, cluster_to_dict, load_cluster
from polychip.spec.errors import PolychipError, SpecError

EXAMPLE = """\
name: h800-plus-910b
nodes:
  - chip: h800            # catalog name, or a name declared under `chips:`
    count: 2              # nodes of this kind
    chips_per_node: 8
    nic_gbps: 400         # node's total bandwidth to the cluster network
  - chip: ascend-910b
    count: 4
    chips_per_node: 8
    nic_gbps: 200
network: {kind: roce, latency_us: 10}
chips:                    # optional inline chips not in the catalog
  acme-npu: {vendor: acme, peak_tflops_bf16: 200, memory_gib: 64, memory_gbps: 1600, intra_node_gbps: 400}
"""  # noqa: E501  (the issue's example, verbatim)


def _write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _node(chip: str = "h800", **kw: object) -> dict[str, object]:
    return {"chip": chip, "count": 1, "chips_per_node": 8, "nic_gbps": 100, **kw}


def test_issue_example_loads(tmp_path: Path) -> None:
    cluster = load_cluster(_write(tmp_path, EXAMPLE))
    assert cluster.name == "h800-plus-910b"
    assert [g.chip.name for g in cluster.groups] == ["h800", "ascend-910b"]
    assert cluster.num_devices == 2 * 8 + 4 * 8
    assert len(cluster.nodes) == 6
    # Nodes are numbered globally, in file order.
    assert [n.index for n in cluster.nodes] == list(range(6))
    assert [cluster.first_node(g) for g in cluster.groups] == [0, 2]
    assert cluster.group_of_node(1).chip.name == "h800"
    assert cluster.group_of_node(2).chip.name == "ascend-910b"
    with pytest.raises(IndexError):
        cluster.group_of_node(6)
    assert cluster.network.kind == "roce"
    assert cluster.network.latency_s == pytest.approx(10e-6)
    # Summed dense bf16 peak: 16 x 989 + 32 x 304 TFLOP/s.
    assert cluster.peak_flops("bf16") == pytest.approx(16 * 989e12 + 32 * 304e12)


def test_nic_gbps_is_gigabits_chip_gbps_are_gigabytes() -> None:
    cluster = cluster_from_dict(
        {
            "nodes": [_node("acme-npu", nic_gbps=400)],
            "chips": {
                "acme-npu": {
                    "vendor": "acme",
                    "peak_tflops_bf16": 200,
                    "memory_gib": 64,
                    "memory_gbps": 1600,
                    "intra_node_gbps": 400,
                }
            },
        }
    )
    group = cluster.groups[0]
    assert group.nic_bw_bytes_per_s == pytest.approx(50e9)  # 400 Gbit/s = 50 GB/s
    chip = group.chip
    assert chip.memory_bw_bytes_per_s == pytest.approx(1600e9)  # GB/s, not Gbit/s
    assert chip.link_bw_bytes_per_s == pytest.approx(200e9)  # 400 GB/s both ways, 200 each
    assert chip.memory_bytes == 64 * GIB
    assert chip.peak_flops("bf16") == pytest.approx(200e12)
    assert chip.peak_flops("fp16") == pytest.approx(200e12)  # fp16 defaults to the bf16 peak
    # Stated defaults for inline chips (docs/accelerators.md): the median measured large-GEMM
    # efficiency, direct links at the A100 NVLink efficiency, no fp32/tf32 peak, no wave
    # quantization.
    assert chip.compute_efficiency == pytest.approx(0.78)
    assert chip.figures["compute_efficiency"].confidence == "low"
    assert chip.peer_to_peer and chip.link_efficiency == pytest.approx(0.7)
    assert chip.compute_units is None and chip.peak_flops_fp32 is None
    with pytest.raises(PolychipError, match=r"acme-npu.*fp32.*peak_tflops_fp32"):
        chip.peak_flops("fp32")
    assert chip.island == "acme/acme"


def test_inline_chips_declare_precisions_and_links() -> None:
    decl = {"vendor": "acme", "peak_tflops_bf16": 200, "peak_tflops_fp32": 50,
            "peak_tflops_tf32": 100, "memory_gib": 24, "memory_gbps": 1000,
            "intra_node_gbps": 64, "compute_units": 100, "peer_to_peer": False,
            "link_efficiency": 0.6}  # fmt: skip
    chip = cluster_from_dict({"nodes": [_node("acme-npu")], "chips": {"acme-npu": decl}}).groups[
        0
    ].chip
    assert [chip.peak_flops(p) for p in ("fp32", "tf32", "bf16", "fp16")] == pytest.approx(
        [50e12, 100e12, 200e12, 200e12]
    )
    assert (chip.compute_units, chip.peer_to_peer, chip.link_efficiency) == (100, False, 0.6)
    # A catalog chip's link can be overridden: a pair of RTX 3090 on an NVLink bridge.
    bridged = cluster_from_dict(
        {"nodes": [_node("rtx3090", chips_per_node=2)],
         "chips": {"rtx3090": {"peer_to_peer": True, "intra_node_gbps": 112.5}}}
    ).groups[0].chip  # fmt: skip
    assert bridged.peer_to_peer and bridged.link_bw_bytes_per_s == pytest.approx(56.25e9)
    assert bridged.peak_flops("bf16") == pytest.approx(71e12)  # the rest from the catalog


def test_defaults_network_and_chips_per_node() -> None:
    cluster = cluster_from_dict({"nodes": [{"chip": "h100", "count": 3, "nic_gbps": 800}]})
    assert cluster.groups[0].chips_per_node == 8
    assert cluster.num_devices == 24
    assert cluster.network.kind == "roce"
    assert cluster.network.host_copy_bw_bytes_per_s == pytest.approx(25e9)


def test_islands_by_vendor_library() -> None:
    cluster = cluster_from_dict(
        {"nodes": [_node("h800"), _node("h100"), _node("910b"), _node("mi300x")]}
    )
    islands = [g.chip.island for g in cluster.groups]
    assert islands[0] == islands[1]  # two NVIDIA chip types share NCCL
    assert len(set(islands)) == 3
    assert [c.name for c in cluster.chips()] == ["h800", "h100", "ascend-910b", "mi300x"]


def test_inline_figures_override_a_catalog_chip() -> None:
    cluster = cluster_from_dict(
        {"nodes": [_node("h20")], "chips": {"h20": {"memory_gib": 80}}}  # an 80 GB H20 card
    )
    chip = cluster.groups[0].chip
    assert chip.memory_bytes == 80 * GIB
    assert chip.peak_flops("bf16") == lookup("h20").peak_flops("bf16")


def test_a_cluster_file_declares_the_rate_fused_attention_sustains() -> None:
    """`attention_efficiency`: a measured fraction of the 16-bit peak for SDPA's flash
    kernel, priced instead of a large GEMM's; kept through the plan file's round trip; out
    of (0, 1] refused."""
    from polychip.costmodel.kernels import flash_attention_s

    def flash(cluster) -> float:  # type: ignore[no-untyped-def]
        return flash_attention_s(cluster.groups[0].chip, "bf16", sequences_heads=32,
                                 seq_len=4096, head_dim=128, matmuls=2, causal=True,
                                 n_bytes=0.0)

    h20 = cluster_from_dict({"nodes": [_node("h20")]})
    assert h20.groups[0].chip.attention_efficiency is None  # unmeasured: as a large GEMM
    halved = cluster_from_dict({"nodes": [_node("h20")],
                                "chips": {"h20": {"attention_efficiency": 0.39}}})
    gemm = h20.groups[0].chip.compute_efficiency
    assert flash(halved) == pytest.approx(flash(h20) * gemm / 0.39)
    assert cluster_from_dict(cluster_to_dict(halved)) == halved
    with pytest.raises(SpecError, match="attention_efficiency"):
        cluster_from_dict({"nodes": [_node("h20")],
                           "chips": {"h20": {"attention_efficiency": 1.5}}})


@pytest.mark.parametrize("key", ["BI150", "iluvatar-bi150", "Bi_V150"])
def test_inline_completion_matches_the_chip_by_alias_and_case(key: str) -> None:
    # Written differently from the node's `chip:`, the declaration still completes it
    # (it used to be ignored silently, then the missing figure was reported).
    cluster = cluster_from_dict({"nodes": [_node("bi150")], "chips": {key: {"memory_gib": 32}}})
    assert cluster.groups[0].chip.name == "bi150"
    assert cluster.groups[0].chip.memory_bytes == 32 * GIB


def test_inline_chip_matched_ignoring_case() -> None:
    decl = {"vendor": "acme", "peak_tflops_bf16": 100, "memory_gib": 16, "memory_gbps": 500,
            "intra_node_gbps": 100}  # fmt: skip
    cluster = cluster_from_dict({"nodes": [_node("ACME_NPU")], "chips": {"acme-npu": decl}})
    assert cluster.groups[0].chip.name == "acme-npu"


def test_a_chip_declared_twice_is_an_error() -> None:
    with pytest.raises(SpecError, match="declared twice") as info:
        chips = {"bi150": {"memory_gib": 32}, "BI150": {"memory_gib": 64}}
        cluster_from_dict({"nodes": [_node("bi150")], "chips": chips}, file="c.yaml")
    assert str(info.value).startswith("c.yaml: chips.BI150:")


def test_inline_chip_missing_a_figure_names_it() -> None:
    with pytest.raises(SpecError, match="memory_gbps") as info:
        acme = {"peak_tflops_bf16": 1, "memory_gib": 1, "intra_node_gbps": 1}
        cluster_from_dict({"nodes": [_node("acme")], "chips": {"acme": acme}}, file="c.yaml")
    assert "nodes[0].chip" in str(info.value)


# ---- bad input: SpecError naming the file and the key path ------------------------------

BAD = [
    # (yaml text, expected key path, a word of the rule)
    ("nodes:\n  - {chip: h800, count: 2, nic_gbps: 400, colour: red}\n", "nodes[0].colour",
     "unknown key"),
    ("name: x\nnodez: []\n", "nodes", "required"),
    ("nodes:\n  - {chip: h800, count: 1, nic_gbps: 400}\n  - {chip: h800, count: 0, nic_gbps: 1}\n",
     "nodes[1].count", "greater than 0"),
    ("nodes:\n  - {chip: h800, count: -2, nic_gbps: 400}\n", "nodes[0].count", "greater than 0"),
    ("nodes:\n  - {chip: h800, count: 1, chips_per_node: 0, nic_gbps: 400}\n",
     "nodes[0].chips_per_node", "greater than 0"),
    ("nodes:\n  - {chip: h800, count: 1, nic_gbps: -1}\n", "nodes[0].nic_gbps", "greater than 0"),
    ("nodes:\n  - {chip: h800, count: 1}\n", "nodes[0].nic_gbps", "required"),
    ("nodes:\n  - {chip: h800, count: 1.5, nic_gbps: 1}\n", "nodes[0].count", "integer"),
    ("nodes: []\n", "nodes", "at least 1"),
    ("nodes:\n  - {chip: h900, count: 1, nic_gbps: 1}\n", "nodes[0].chip", "unknown chip"),
    ("nodes:\n  - {chip: h800, count: 1, nic_gbps: 1}\nnetwork: {kind: carrier-pigeon}\n",
     "network.kind", "roce"),
    ("nodes:\n  - {chip: h800, count: 1, nic_gbps: 1}\nnetwork: {latency_us: -1}\n",
     "network.latency_us", "greater than or equal"),
    ("nodes:\n  - {chip: x, count: 1, nic_gbps: 1}\nchips:\n  x: {memory_gib: 0}\n",
     "chips.x.memory_gib", "greater than 0"),
    ("nodes:\n  - {chip: x, count: 1, nic_gbps: 1}\nchips:\n  x: {compute_efficiency: 1.5}\n",
     "chips.x.compute_efficiency", "less than or equal"),
    ("nodes:\n  - {chip: x, count: 1, nic_gbps: 1}\nchips:\n  x: {peak_tflops: 1}\n",
     "chips.x.peak_tflops", "unknown key"),
    ("nodes:\n  - {chip: h800, count: 1, nic_gbps: .inf}\n", "nodes[0].nic_gbps", "finite"),
    ("nodes:\n  - {chip: h800, count: 1, nic_gbps: 1}\nnetwork: {latency_us: .nan}\n",
     "network.latency_us", "finite"),
    ("schema_version: 2\nnodes:\n  - {chip: h800, count: 1, nic_gbps: 1}\n", "schema_version",
     "1"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "rule"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_cluster_names_file_and_key(tmp_path: Path, text: str, key: str, rule: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    err = info.value
    assert isinstance(err, PolychipError) and isinstance(err, ValueError)
    assert err.file == str(path)
    assert err.key == key
    assert str(err).startswith(f"{path}: {key}: ")
    assert rule in str(err)


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (b"- a\n- b\n", "YAML mapping"),
        (b"", "YAML mapping"),
        (b"just a string\n", "YAML mapping"),
        (b"nodes:\n  - chip: h800\n    count: 2\n   nic_gbps: 3\n", "not valid YAML"),
        (b"nodes: [\n", "not valid YAML"),
        (b"\x00\xff\xfe\x80binary", "not a text file"),
    ],
)
def test_unreadable_cluster_files(tmp_path: Path, content: bytes, rule: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=rule) as info:
        load_cluster(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "nodes:\n  - chip: h800\n    count: 2\n   nic_gbps: 3\n")
    with pytest.raises(SpecError) as info:
        load_cluster(path)
    assert info.value.key == "line 4"


def test_missing_cluster_file(tmp_path: Path) -> None:
    for path in (tmp_path / "nope.yaml", tmp_path):  # absent, and a directory
        with pytest.raises(SpecError, match="not found") as info:
            load_cluster(path)
        assert str(path) in str(info.value)


# ---- round trip (plans embed the resolved cluster) ----------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"nodes": [_node("h800", count=2, nic_gbps=400), _node("910b", count=4, nic_gbps=200)],
         "network": {"kind": "roce", "latency_us": 10}},
        {"name": "everything",
         "nodes": [_node(n, count=i + 1, nic_gbps=25 * (i + 1), label=f"rack{i}")
                   for i, n in enumerate(["a100", "a100-40g", "h100", "h200", "h20", "l40s",
                                          "rtx4090", "rtx3090", "v100", "t4", "mi250x",
                                          "mi300x", "gaudi2", "gaudi3", "cpu-slow",
                                          "cpu-fast"])],
         "network": {"kind": "infiniband", "latency_us": 2.5, "host_copy_gbps": 50}},
        {"nodes": [_node("bi150"), _node("acme-npu", chips_per_node=4)],
         "chips": {"bi150": {"memory_gib": 32},
                   "acme-npu": {"vendor": "acme", "peak_tflops_bf16": 123.4, "memory_gib": 24.5,
                                "memory_gbps": 777.7, "intra_node_gbps": 111.1,
                                "compute_efficiency": 0.33, "device_type": "npu",
                                "torch_backend": "gloo", "peak_tflops_fp32": 12.5,
                                "compute_units": 48, "peer_to_peer": False,
                                "link_efficiency": 0.5}}},
        {"nodes": [_node("h800", count=2, nic_gbps=400, label="east"),
                   _node("h800", count=3, nic_gbps=400, label="west"), _node("910b")],
         "links": [{"between": ["east", "west"], "gbps": 100, "latency_us": 40},
                   {"between": [1, 1], "gbps": 300}, {"between": [2, "east"], "gbps": 50}]},
    ],
    ids=["issue-example", "catalog", "inline", "links"],
)  # fmt: skip
def test_cluster_dict_round_trip(data: dict) -> None:
    cluster = cluster_from_dict(data)
    again = cluster_from_dict(cluster_to_dict(cluster))
    assert again == cluster
    assert cluster_to_dict(again) == cluster_to_dict(cluster)


def test_docs_describe_every_cluster_key() -> None:
    from polychip.spec.cluster import ChipDecl, ClusterDecl, NetworkDecl, NodeDecl

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cluster-format.md").read_text()
    from polychip.spec.cluster_links import LinkDecl

    for decl in (ClusterDecl, NodeDecl, NetworkDecl, ChipDecl, LinkDecl):
        for key in decl.model_fields:
            assert f"`{key}`" in doc, f"docs/cluster-format.md does not describe {key}"


# ---- links between node groups ------------------------------------------------------------

LINKED = {
    "nodes": [_node("h800", count=2, nic_gbps=400, label="east"),
              _node("h800", count=3, nic_gbps=400, label="west"),
              _node("910b", nic_gbps=200)],
    "network": {"latency_us": 10},
}  # fmt: skip


def test_links_name_groups_by_label_or_index() -> None:
    links = [{"between": ["west", "east"], "gbps": 100, "latency_us": 40},
             {"between": [1, 1], "gbps": 300},
             {"between": [0, "ascend-910bx8"], "gbps": 50}]  # the default label  # fmt: skip
    c = cluster_from_dict(LINKED | {"links": links})
    east_west = c.link_between(1, 0)
    assert east_west is not None and east_west.groups == (0, 1)
    assert east_west.bw_bytes_per_s == pytest.approx(12.5e9)  # Gbit/s, like nic_gbps
    assert east_west.latency_s == pytest.approx(40e-6)
    inside_west = c.link_between(1, 1)
    assert inside_west is not None and inside_west.latency_s is None  # the network's
    assert c.link_between(2, 0) is not None and c.link_between(0, 0) is None
    assert c.link_between(1, 2) is None


BAD_LINKS = [
    ({"between": ["east", "north"], "gbps": 1}, "links[0].between[1]", "no node group"),
    ({"between": [0, 7], "gbps": 1}, "links[0].between[1]", "does not exist"),
    ({"between": [0], "gbps": 1}, "links[0].between[1]", "required"),
    ({"between": [0, 1], "gbps": 0}, "links[0].gbps", "greater than 0"),
    ({"between": [0, 1], "gbps": 1, "latency_us": -1}, "links[0].latency_us", "greater than"),
    ({"between": [0, 1], "gbps": 1, "colour": 2}, "links[0].colour", "unknown key"),
    ({"between": [2, 2], "gbps": 1}, "links[0].between", "single node"),
    ({"between": [0, 2], "gbps": 300}, "links[0].gbps", "exceeds the NIC of nodes[2]"),
]  # fmt: skip


@pytest.mark.parametrize(("link", "key", "rule"), BAD_LINKS)
def test_bad_links_name_file_and_key(link: dict, key: str, rule: str) -> None:
    with pytest.raises(SpecError) as info:
        cluster_from_dict(LINKED | {"links": [link]}, file="c.yaml")
    assert info.value.key == key
    assert str(info.value).startswith(f"c.yaml: {key}: ") and rule in str(info.value)


def test_a_pair_linked_twice_or_an_ambiguous_label_is_an_error() -> None:
    twice = [{"between": [0, 1], "gbps": 1}, {"between": ["west", "east"], "gbps": 2}]
    with pytest.raises(SpecError, match=r"already linked by links\[0\]") as info:
        cluster_from_dict(LINKED | {"links": twice}, file="c.yaml")
    assert info.value.key == "links[1].between"
    same = {"nodes": [_node("h800"), _node("h800"), _node("910b")]}  # labels h800x8 twice
    with pytest.raises(SpecError, match="distinct") as info:
        cluster_from_dict(same | {"links": [{"between": ["h800x8", 2], "gbps": 1}]})
    assert info.value.key == "links[0].between[0]"
