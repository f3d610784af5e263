"""Measured links between node groups: the `links:` list of a cluster file.

A NIC figure says how fast a node reaches the network; real clusters measure very different
point-to-point bandwidth between different pairs of node groups (another rack, another
building, an oversubscribed spine). A link declares the figure measured between one node of
group A and one node of group B (or two nodes of one group); it replaces the NIC figure for
every transfer between such nodes (docs/cluster-format.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from polychip.spec.errors import SpecError


class LinkDecl(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    between: tuple[int | str, int | str] = Field(
        description="two node groups: their `label` or their index in `nodes`"
    )
    gbps: PositiveFloat = Field(description="measured bandwidth, Gbit/s, each direction")
    latency_us: float | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class GroupLink:
    """Bandwidth and latency measured between a node of `groups[0]` and a node of
    `groups[1]` (the same group twice: between two of its nodes)."""

    groups: tuple[int, int]  # node-group indices, smaller first
    bw_bytes_per_s: float  # each direction
    latency_s: float | None = None  # None: the network's latency


def _group_index(ref: int | str, labels: Sequence[str], file: str | None, key: str) -> int:
    if isinstance(ref, int):
        if not 0 <= ref < len(labels):
            raise SpecError(
                f"node group {ref} does not exist (nodes has {len(labels)} entries, "
                f"0 to {len(labels) - 1}); give a group's index or its label",
                file=file,
                key=key,
            )
        return ref
    hits = [i for i, label in enumerate(labels) if label == ref]
    if not hits:
        raise SpecError(
            f"no node group is labelled {ref!r} (labels: {', '.join(labels)}); give a "
            f"group's label or its index in nodes",
            file=file,
            key=key,
        )
    if len(hits) > 1:
        raise SpecError(
            f"label {ref!r} names nodes[{hits[0]}] and nodes[{hits[1]}]; give them distinct "
            f"`label`s, or refer to the group by its index",
            file=file,
            key=key,
        )
    return hits[0]


def resolve_links(
    decls: Sequence[LinkDecl],
    labels: Sequence[str],
    node_counts: Sequence[int],
    nic_bw_bytes_per_s: Sequence[float],
    file: str | None,
) -> tuple[GroupLink, ...]:
    """Validated links, groups by index. `labels`, `node_counts` and the NICs are per group."""
    out: list[GroupLink] = []
    seen: dict[tuple[int, int], int] = {}
    for i, decl in enumerate(decls):
        at = f"links[{i}]"
        a, b = sorted(
            _group_index(ref, labels, file, f"{at}.between[{j}]")
            for j, ref in enumerate(decl.between)
        )
        if a == b and node_counts[a] < 2:
            raise SpecError(
                f"nodes[{a}] has a single node: there is no link between two of its nodes; "
                f"name two different groups",
                file=file,
                key=f"{at}.between",
            )
        if (a, b) in seen:
            raise SpecError(
                f"nodes[{a}] and nodes[{b}] are already linked by links[{seen[(a, b)]}]; keep "
                f"one figure per pair",
                file=file,
                key=f"{at}.between",
            )
        seen[(a, b)] = i
        bw = decl.gbps * 1e9 / 8
        for g in (a, b):
            if bw > nic_bw_bytes_per_s[g] * (1 + 1e-12):
                raise SpecError(
                    f"{decl.gbps:g} Gbit/s exceeds the NIC of nodes[{g}] "
                    f"({nic_bw_bytes_per_s[g] * 8 / 1e9:g} Gbit/s): a node moves no more than "
                    f"its NIC; check the measurement, or raise nodes[{g}].nic_gbps",
                    file=file,
                    key=f"{at}.gbps",
                )
        lat = None if decl.latency_us is None else decl.latency_us * 1e-6
        out.append(GroupLink((a, b), bw, lat))
    return tuple(out)


def links_to_dict(links: Sequence[GroupLink]) -> list[dict[str, object]]:
    """As a cluster file writes them, groups by index (labels may repeat)."""
    out: list[dict[str, object]] = []
    for link in links:
        entry: dict[str, object] = {
            "between": list(link.groups),
            "gbps": link.bw_bytes_per_s * 8 / 1e9,
        }
        if link.latency_s is not None:
            entry["latency_us"] = link.latency_s * 1e6
        out.append(entry)
    return out
