"""Cluster file (YAML) -> validated, frozen Cluster.

Units in the file follow each field's usual convention: `nic_gbps` is gigaBITS per second
(network convention); chip figures (`memory_gbps`, `intra_node_gbps`) are gigaBYTES per
second (datasheet convention). Internally everything is bytes and bytes/s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from polychip.spec.accelerators import (
    Accelerator,
    build_accelerator,
    catalog_entry,
    normalise,
    resolve_name,
    unknown_chip_error,
)
from polychip.spec.cluster_links import GroupLink, LinkDecl, resolve_links
from polychip.spec.economics import MONEY_KEYS, Economics, MoneyDecl
from polychip.spec.errors import SpecError, pydantic_message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ChipDecl(MoneyDecl):
    vendor: str | None = None
    display_name: str | None = None
    device_type: Literal["cuda", "npu", "mlu", "xpu", "hpu", "cpu"] | None = None
    torch_backend: str | None = None
    collective_library: str | None = None
    intra_node_link: str | None = None
    peak_tflops_fp32: PositiveFloat | None = None
    peak_tflops_tf32: PositiveFloat | None = None
    peak_tflops_bf16: PositiveFloat | None = None
    peak_tflops_fp16: PositiveFloat | None = None
    memory_gib: PositiveFloat | None = None
    memory_gbps: PositiveFloat | None = None
    intra_node_gbps: PositiveFloat | None = None
    compute_efficiency: float | None = Field(default=None, gt=0, le=1)
    attention_efficiency: float | None = Field(default=None, gt=0, le=1)
    compute_units: PositiveInt | None = None
    peer_to_peer: bool | None = None
    link_efficiency: float | None = Field(default=None, gt=0, le=1)
    kernel_launch_us: float | None = Field(default=None, ge=0)


class NodeDecl(MoneyDecl):
    """A node group; `board_power_w`, `price_usd`, `rent_usd_per_hour` override the chip's."""

    chip: str
    count: PositiveInt = Field(description="number of nodes of this kind")
    chips_per_node: PositiveInt = 8
    nic_gbps: PositiveFloat = Field(description="node's total bandwidth to the network, Gbit/s")
    label: str | None = None


class NetworkDecl(_Strict):
    kind: Literal["roce", "infiniband", "ethernet"] = "roce"
    latency_us: float = Field(default=10.0, ge=0)
    # Cross-island traffic is staged through host memory: device->host->NIC->host->device.
    host_copy_gbps: PositiveFloat = Field(default=25.0, description="PCIe host copy, GB/s")


class ClusterDecl(_Strict):
    schema_version: Literal[1] = 1
    name: str = "cluster"
    nodes: list[NodeDecl] = Field(min_length=1)
    network: NetworkDecl = NetworkDecl()
    links: list[LinkDecl] = Field(default_factory=list)
    chips: dict[str, ChipDecl] = Field(default_factory=dict)


@dataclass(frozen=True)
class NodeGroup:
    """`num_nodes` interchangeable nodes: same chip, same shape, same NIC."""

    index: int
    chip: Accelerator
    num_nodes: int
    chips_per_node: int
    nic_bw_bytes_per_s: float
    label: str
    node_economics: Economics | None = None  # the node group's own power/prices, if declared

    @property
    def economics(self) -> Economics:
        """Board power and prices of this group's chips: the group's, else the chip's."""
        return self.node_economics or self.chip.economics

    @property
    def num_devices(self) -> int:
        return self.num_nodes * self.chips_per_node


@dataclass(frozen=True)
class Network:
    kind: str
    latency_s: float
    host_copy_bw_bytes_per_s: float


@dataclass(frozen=True)
class Node:
    """One physical node, numbered globally in file order."""

    index: int
    group: NodeGroup


@dataclass(frozen=True)
class Cluster:
    name: str
    groups: tuple[NodeGroup, ...]
    network: Network
    links: tuple[GroupLink, ...] = ()  # measured figures between node groups

    def link_between(self, group_a: int, group_b: int) -> GroupLink | None:
        """The measured link between a node of group_a and one of group_b, if declared."""
        pair = (min(group_a, group_b), max(group_a, group_b))
        return next((link for link in self.links if link.groups == pair), None)

    @property
    def num_devices(self) -> int:
        return sum(g.num_devices for g in self.groups)

    @functools.cached_property
    def nodes(self) -> tuple[Node, ...]:
        """Every node, groups in file order (built once: plans of thousands of stages look
        their nodes up here)."""
        out: list[Node] = []
        for g in self.groups:
            out.extend(Node(len(out), g) for _ in range(g.num_nodes))
        return tuple(out)

    def first_node(self, group: NodeGroup) -> int:
        return sum(g.num_nodes for g in self.groups[: group.index])

    def group_of_node(self, node: int) -> NodeGroup:
        for g in self.groups:
            start = self.first_node(g)
            if start <= node < start + g.num_nodes:
                return g
        raise IndexError(f"node {node} is not in cluster {self.name!r}")

    def chips(self) -> tuple[Accelerator, ...]:
        """Distinct chip types in file order."""
        seen: dict[str, Accelerator] = {}
        for g in self.groups:
            seen.setdefault(g.chip.name, g.chip)
        return tuple(seen.values())

    def peak_flops(self, precision: str) -> float:
        return sum(g.num_devices * g.chip.peak_flops(precision) for g in self.groups)


def _inline_chips(decl: ClusterDecl, file: str | None) -> dict[str, tuple[str, ChipDecl]]:
    """Inline chips keyed as node names are matched: a catalog chip by its canonical name
    (so `chips: {BI150: ...}` or `{iluvatar-bi150: ...}` completes catalog `bi150`), any
    other by its normalised name. Value: (the key as written, its declaration)."""
    out: dict[str, tuple[str, ChipDecl]] = {}
    for key, chip in decl.chips.items():
        ident = resolve_name(key) or normalise(key)
        if ident in out:
            raise SpecError(
                f"chip {ident!r} is declared twice (as {out[ident][0]!r} and {key!r}); "
                f"keep one declaration",
                file=file,
                key=f"chips.{key}",
            )
        out[ident] = (key, chip)
    return out


def _resolve_chip(
    inline_chips: dict[str, tuple[str, ChipDecl]], name: str, file: str | None, key: str
) -> Accelerator:
    canonical = resolve_name(name)
    inline = inline_chips.get(canonical or normalise(name))
    if inline is None:
        if canonical is None:
            raise unknown_chip_error(name, file=file, key=key)
        return build_accelerator(canonical, catalog_entry(canonical), file=file, key=key)
    entry: dict[str, Any] = catalog_entry(canonical) if canonical is not None else {}
    entry.update(inline[1].model_dump(exclude_none=True))  # inline completes or overrides
    return build_accelerator(canonical or inline[0], entry, file=file, key=key)


def _node_economics(chip: Accelerator, node: NodeDecl, index: int) -> Economics | None:
    declared = {k: getattr(node, k) for k in MONEY_KEYS if getattr(node, k) is not None}
    return chip.economics.override(declared, f"nodes[{index}]") if declared else None


def cluster_from_dict(data: Any, file: str | None = None) -> Cluster:
    if not isinstance(data, dict):
        raise SpecError("a cluster file is a YAML mapping with a `nodes:` list", file=file)
    try:
        decl = ClusterDecl.model_validate(data)
    except ValidationError as exc:
        raise pydantic_message(exc, file) from None
    inline_chips = _inline_chips(decl, file)
    groups = []
    for i, node in enumerate(decl.nodes):
        chip = _resolve_chip(inline_chips, node.chip, file, f"nodes[{i}].chip")
        groups.append(
            NodeGroup(
                index=i,
                chip=chip,
                num_nodes=node.count,
                chips_per_node=node.chips_per_node,
                nic_bw_bytes_per_s=node.nic_gbps * 1e9 / 8,
                label=node.label or f"{chip.name}x{node.chips_per_node}",
                node_economics=_node_economics(chip, node, i),
            )
        )
    net = decl.network
    network = Network(net.kind, net.latency_us * 1e-6, net.host_copy_gbps * 1e9)
    links = resolve_links(
        decl.links,
        [g.label for g in groups],
        [g.num_nodes for g in groups],
        [g.nic_bw_bytes_per_s for g in groups],
        file,
    )
    return Cluster(decl.name, tuple(groups), network, links)


def load_cluster(path: str | Path) -> Cluster:
    path = Path(path)
    if not path.is_file():
        raise SpecError("cluster file not found (give the path to a YAML file)", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError("not a text file (expected UTF-8 YAML)", file=str(path)) from None
    except OSError as exc:
        raise SpecError(f"cannot read the cluster file: {exc.strerror}", file=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        raise SpecError(
            f"not valid YAML: {getattr(exc, 'problem', exc)}", file=str(path), key=where
        ) from None
    return cluster_from_dict(data, file=str(path))


from polychip.spec.cluster_dict import CLUSTER_SCHEMA_VERSION, cluster_to_dict  # noqa: E402

__all__ = [
    "CLUSTER_SCHEMA_VERSION", "Cluster", "NodeGroup", "cluster_from_dict", "cluster_to_dict",
    "load_cluster",
]
