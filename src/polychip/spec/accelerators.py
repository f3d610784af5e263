"""The accelerator catalog: shipped data (data/accelerators.yaml), lookup by name or alias.

Every figure carries its source and a confidence. A chip the catalog does not know, or a
figure it does not have, is an error that asks for an inline spec -- never a silent guess.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from polychip.spec.errors import PolychipError, SpecError

GIB = 1024**3
PRECISIONS = ("bf16", "fp16")

# One line (flow-style YAML), so an error that shows it stays one line on the terminal.
INLINE_EXAMPLE = (
    "chips: {acme-npu: {vendor: acme, peak_tflops_bf16: 200, memory_gib: 64, "
    "memory_gbps: 1600, intra_node_gbps: 400}}"
)


@dataclass(frozen=True)
class Figure:
    """One catalog number with its provenance."""

    value: float | None
    source: str
    confidence: str


@dataclass(frozen=True)
class Accelerator:
    """One chip type. Bandwidths in bytes/s, FLOP/s dense."""

    name: str
    vendor: str
    device_type: str
    torch_backend: str
    collective_library: str
    intra_node_link: str
    peak_flops_bf16: float | None
    peak_flops_fp16: float | None
    memory_bytes: int
    memory_bw_bytes_per_s: float
    # Scale-up link, one direction, per chip (datasheets quote both directions summed).
    link_bw_bytes_per_s: float
    compute_efficiency: float
    display_name: str = ""
    figures: Mapping[str, Figure] = field(default_factory=dict, compare=False, hash=False)

    @property
    def island(self) -> str:
        """Ranks of one island share a native collective library (NCCL, HCCL, ...)."""
        return f"{self.vendor}/{self.collective_library}"

    def peak_flops(self, precision: str) -> float:
        if precision not in PRECISIONS:
            raise PolychipError(
                f"precision {precision!r} has no catalog peak; use one of {', '.join(PRECISIONS)}"
            )
        peak = self.peak_flops_bf16 if precision == "bf16" else self.peak_flops_fp16
        if peak is None:
            other = "fp16" if precision == "bf16" else "bf16"
            raise PolychipError(
                f"chip {self.name!r} has no dense {precision} peak in the catalog; "
                f"train in {other} (--precision {other}) or declare "
                f"peak_tflops_{precision} for it under `chips:` in the cluster file"
            )
        return peak

    def achievable_flops(self, precision: str) -> float:
        return self.peak_flops(precision) * self.compute_efficiency


def normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


@cache
def _raw_catalog() -> dict[str, dict[str, Any]]:
    text = resources.files("polychip.spec").joinpath("data/accelerators.yaml").read_text()
    data = yaml.safe_load(text)
    return dict(data["chips"])


@cache
def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, entry in _raw_catalog().items():
        table[name] = name
        for alias in entry.get("aliases", []):
            table[normalise(alias)] = name
    return table


def catalog_names() -> list[str]:
    return list(_raw_catalog())


def resolve_name(name: str) -> str | None:
    """Canonical catalog name for a name or alias, or None."""
    return _alias_table().get(normalise(name))


def closest_names(name: str, n: int = 4) -> list[str]:
    table = _alias_table()
    hits = difflib.get_close_matches(normalise(name), list(table), n=n * 2, cutoff=0.5)
    out: list[str] = []
    for hit in hits:
        if table[hit] not in out:
            out.append(table[hit])
    return out[:n]


def unknown_chip_error(name: str, file: str | None = None, key: str | None = None) -> SpecError:
    near = closest_names(name)
    hint = f"closest known: {', '.join(near)}; " if near else ""
    return SpecError(
        f"unknown chip {name!r}: {hint}see `polychip catalog` for all names, or declare it "
        f"inline in the cluster file, e.g. {INLINE_EXAMPLE}",
        file=file,
        key=key,
    )


def _figure(entry: Mapping[str, Any], key: str) -> Figure:
    raw = entry.get(key)
    if isinstance(raw, Mapping):
        return Figure(raw.get("value"), str(raw.get("source", "")), str(raw.get("confidence", "")))
    return Figure(raw, "declared inline in the cluster file", "user")


def build_accelerator(
    name: str, entry: Mapping[str, Any], *, file: str | None = None, key: str | None = None
) -> Accelerator:
    """An Accelerator from a catalog entry or an inline spec (figures plain or with sources)."""
    figs = {
        k: _figure(entry, k)
        for k in (
            "peak_tflops_bf16",
            "peak_tflops_fp16",
            "memory_gib",
            "memory_gbps",
            "intra_node_gbps",
            "compute_efficiency",
        )
        if k in entry
    }

    def need(k: str) -> float:
        fig = figs.get(k)
        if fig is None or fig.value is None:
            raise SpecError(
                f"chip {name!r} has no {k} figure (the catalog has no trustworthy source); "
                f"declare it under `chips: {{{name}: {{{k}: ...}}}}` in the cluster file, "
                f"or measure it with a profile",
                file=file,
                key=key,
            )
        return float(fig.value)

    def opt(k: str) -> float | None:
        fig = figs.get(k)
        return None if fig is None or fig.value is None else float(fig.value)

    bf16, fp16 = opt("peak_tflops_bf16"), opt("peak_tflops_fp16")
    if bf16 is None and fp16 is None:
        need("peak_tflops_bf16")
    if fp16 is None and bf16 is not None:
        fp16 = bf16
        figs["peak_tflops_fp16"] = figs["peak_tflops_bf16"]
    efficiency = opt("compute_efficiency")
    if efficiency is None:
        efficiency = 0.5
        figs["compute_efficiency"] = Figure(0.5, "default for chips without a figure", "low")
    return Accelerator(
        name=name,
        display_name=str(entry.get("display_name", name)),
        vendor=str(entry.get("vendor", "unknown")),
        device_type=str(entry.get("device_type", "cuda")),
        torch_backend=str(entry.get("torch_backend", "nccl")),
        collective_library=str(entry.get("collective_library", entry.get("vendor", "unknown"))),
        intra_node_link=str(entry.get("intra_node_link", "unknown")),
        peak_flops_bf16=None if bf16 is None else bf16 * 1e12,
        peak_flops_fp16=None if fp16 is None else fp16 * 1e12,
        memory_bytes=int(need("memory_gib") * GIB),
        memory_bw_bytes_per_s=need("memory_gbps") * 1e9,
        link_bw_bytes_per_s=need("intra_node_gbps") * 1e9 / 2,
        compute_efficiency=efficiency,
        figures=figs,
    )


def catalog_entry(name: str) -> dict[str, Any]:
    canonical = resolve_name(name)
    if canonical is None:
        raise unknown_chip_error(name)
    return dict(_raw_catalog()[canonical])


def lookup(name: str) -> Accelerator:
    """The catalog chip for a name or alias (unknown -> error with closest names)."""
    canonical = resolve_name(name)
    if canonical is None:
        raise unknown_chip_error(name)
    return build_accelerator(canonical, _raw_catalog()[canonical])
