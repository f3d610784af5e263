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

from polychip.spec.economics import Economics, economics_from_entry
from polychip.spec.errors import PolychipError, SpecError

GIB = 1024**3
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
# Figures of a chip an inline declaration may give, besides its names (docs/accelerators.md).
FIGURE_KEYS = (
    "peak_tflops_fp32",
    "peak_tflops_tf32",
    "peak_tflops_bf16",
    "peak_tflops_fp16",
    "memory_gib",
    "memory_gbps",
    "intra_node_gbps",
    "compute_efficiency",
    "attention_efficiency",
    "compute_units",
    "peer_to_peer",
    "link_efficiency",
    "kernel_launch_us",
)
# Stated defaults for a chip (inline, or a catalog entry) without the figure: each a planning
# assumption, confidence low, listed in docs/accelerators.md with its reason.
DEFAULT_FIGURES: dict[str, tuple[float | bool, str]] = {
    "compute_efficiency": (
        0.78,
        "default: the median sustained large-GEMM fraction of the dense peak over the 12 "
        "accelerators of the MAMF table (stas00/ml-engineering, 0.51-0.97)",
    ),
    "peer_to_peer": (True, "default: chips of one node exchange directly (NVLink, HCCS, P2P)"),
    "link_efficiency": (
        0.7,
        "default: nccl-tests all-reduce busbw on 8 x A100 NVLink, ~200-210 GB/s of 300 GB/s "
        "one way (NVIDIA/nccl-tests issues 149, 178)",
    ),
}

# One line (flow-style YAML), so an error that shows it stays one line on the terminal.
INLINE_EXAMPLE = (
    "chips: {acme-npu: {vendor: acme, peak_tflops_bf16: 200, memory_gib: 64, "
    "memory_gbps: 1600, intra_node_gbps: 400}}"
)


@dataclass(frozen=True)
class Figure:
    """One catalog number with its provenance."""

    value: float | bool | None
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
    # Sustained fraction of the dense peak on large GEMMs (measured GEMM / datasheet peak).
    compute_efficiency: float
    display_name: str = ""
    peak_flops_fp32: float | None = None  # vector (CUDA-core) fp32, or fp32 matrix units
    peak_flops_tf32: float | None = None  # TF32 matrix units; None: the chip has none
    compute_units: int | None = None  # SMs / CUs the GEMM tiles are spread over
    peer_to_peer: bool = True  # chips of a node exchange directly, not through host memory
    link_efficiency: float = 0.7  # ring-collective bus bandwidth / one-way link figure
    # seconds eager PyTorch spends issuing one kernel on this chip's host (None: the device
    # type's default, costmodel/kernels.LAUNCH_S)
    kernel_launch_s: float | None = None
    # Sustained fraction of the dense 16-bit peak in fused (flash) attention, forward and
    # backward together (measured); None: unmeasured, priced as a large GEMM
    attention_efficiency: float | None = None
    figures: Mapping[str, Figure] = field(default_factory=dict, compare=False, hash=False)
    # board power and prices (spec/economics.py); None figures: unknown
    economics: Economics = field(default_factory=Economics, compare=False, hash=False)

    @property
    def island(self) -> str:
        """Ranks of one island share a native collective library (NCCL, HCCL, ...)."""
        return f"{self.vendor}/{self.collective_library}"

    def peak_flops(self, precision: str) -> float:
        """Dense peak FLOP/s of the job's precision: fp32 (vector units, or fp32 matrix
        units where the chip has them), tf32, bf16 or fp16 (matrix units)."""
        if precision not in PRECISIONS:
            raise PolychipError(
                f"precision {precision!r} has no catalog peak; use one of {', '.join(PRECISIONS)}"
            )
        peaks = {
            "fp32": self.peak_flops_fp32,
            "tf32": self.peak_flops_tf32,
            "bf16": self.peak_flops_bf16,
            "fp16": self.peak_flops_fp16,
        }
        peak = peaks[precision]
        if peak is None:
            has = [p for p in PRECISIONS if peaks[p] is not None]
            use = f"train in {' or '.join(has)} (--precision {has[-1]}) or " if has else ""
            raise PolychipError(
                f"chip {self.name!r} has no dense {precision} peak in the catalog; "
                f"{use}declare peak_tflops_{precision} for it under `chips:` in the cluster file"
            )
        return peak

    @property
    def flash_efficiency(self) -> float:
        """The fraction of the 16-bit peak fused attention sustains: `attention_efficiency`
        where measured, else a large GEMM's (`compute_efficiency`)."""
        return self.attention_efficiency or self.compute_efficiency

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
    figs = {k: _figure(entry, k) for k in FIGURE_KEYS if k in entry}

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

    def tflops(k: str) -> float | None:
        value = opt(k)
        return None if value is None else value * 1e12

    if opt("peak_tflops_bf16") is None and opt("peak_tflops_fp16") is None:
        need("peak_tflops_bf16")
    if opt("peak_tflops_fp16") is None and opt("peak_tflops_bf16") is not None:
        figs["peak_tflops_fp16"] = figs["peak_tflops_bf16"]
    for k, (value, source) in DEFAULT_FIGURES.items():
        if opt(k) is None:
            figs[k] = Figure(value, source, "low")
    units, launch = opt("compute_units"), opt("kernel_launch_us")
    attention = opt("attention_efficiency")
    if attention is not None and not 0 < attention <= 1:
        raise SpecError(f"chip {name!r}: attention_efficiency {attention} must be in (0, 1] "
                        "(a fraction of the dense peak)", file=file, key=key)
    return Accelerator(
        name=name,
        display_name=str(entry.get("display_name", name)),
        vendor=str(entry.get("vendor", "unknown")),
        device_type=str(entry.get("device_type", "cuda")),
        torch_backend=str(entry.get("torch_backend", "nccl")),
        collective_library=str(entry.get("collective_library", entry.get("vendor", "unknown"))),
        intra_node_link=str(entry.get("intra_node_link", "unknown")),
        peak_flops_bf16=tflops("peak_tflops_bf16"),
        peak_flops_fp16=tflops("peak_tflops_fp16"),
        peak_flops_fp32=tflops("peak_tflops_fp32"),
        peak_flops_tf32=tflops("peak_tflops_tf32"),
        memory_bytes=int(need("memory_gib") * GIB),
        memory_bw_bytes_per_s=need("memory_gbps") * 1e9,
        link_bw_bytes_per_s=need("intra_node_gbps") * 1e9 / 2,
        compute_efficiency=need("compute_efficiency"),
        compute_units=None if units is None else int(units),
        peer_to_peer=bool(figs["peer_to_peer"].value),
        link_efficiency=need("link_efficiency"),
        kernel_launch_s=None if launch is None else launch * 1e-6,
        attention_efficiency=attention,
        figures=figs,
        economics=economics_from_entry(entry),
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
