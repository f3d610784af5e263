"""Profile files (JSON, or YAML by suffix) <-> `Profile`, validated with pydantic. Every
problem names the file, the key and the fix (docs/profile-format.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polychip.spec.accelerators import normalise, resolve_name
from polychip.spec.errors import SpecError, key_path
from polychip.spec.profile import (
    PROFILE_KIND,
    PROFILE_SCHEMA_VERSION,
    CollectivePoint,
    Corrections,
    HostPoint,
    ModelShape,
    PassPoint,
    Profile,
    Provenance,
    TransferPoint,
)

DOC = "docs/profile-format.md"


def _positive(default: Any = ...) -> Any:
    """A measured time (or a factor): a finite number > 0."""
    return Field(default, gt=0)


def _count() -> Any:
    return Field(ge=1)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Pass(_In):
    tp: int = _count()
    micro_batch: int = _count()
    seq_len: int = _count()
    fwd_s: float = _positive()
    bwd_s: float = _positive()
    activation_bytes: int | None = Field(default=None, ge=0)


class _Block(_Pass):
    recompute_bwd_s: float | None = _positive(None)
    peak_bytes: int | None = Field(default=None, ge=0)


class _HostPoint(_In):
    micro_batch: int = _count()
    seq_len: int = _count()
    seconds: float = Field(ge=0)


class _Host(_In):
    step_s: float | None = Field(default=None, ge=0)
    micro_batches: list[_HostPoint] = Field(default_factory=list)


class _Collective(_In):
    op: Literal["all_reduce", "all_gather", "reduce_scatter"]
    group_size: int = Field(ge=2)
    message_bytes: int = _count()
    seconds: float = _positive()


class _Transfer(_In):
    message_bytes: int = _count()
    seconds: float = _positive()


class _HostCopy(_In):
    d2h: list[_Transfer] = Field(default_factory=list)
    h2d: list[_Transfer] = Field(default_factory=list)


class _Optimizer(_In):
    seconds_per_param: float = _positive()
    num_params: int | None = Field(default=None, ge=1)
    fixed_s: float | None = Field(default=None, ge=0)


class _Model(_In):
    name: str = ""
    hidden_size: int = _count()
    num_heads: int = _count()
    num_kv_heads: int = _count()
    ffn_hidden_size: int = _count()
    vocab_size: int = _count()
    mlp: Literal["swiglu", "gelu"]


class _Provenance(_In):
    device: str
    device_type: str
    torch_version: str
    date: str
    host: str
    polychip_version: str = ""
    warmup: int | None = Field(default=None, ge=0)
    repeats: int | None = Field(default=None, ge=1)
    memory_method: str = ""
    notes: str = ""


class _Corrections(_In):
    compute: float = _positive(1.0)
    p2p: float = _positive(1.0)
    grad_sync: float = _positive(1.0)
    optimizer: float = _positive(1.0)


class _ProfileIn(_In):
    schema_version: int
    kind: Literal["polychip-profile"]
    chip: str = Field(min_length=1)
    model: _Model
    precision: Literal["fp32", "tf32", "bf16", "fp16"]
    attention: Literal["fused", "eager"]
    provenance: _Provenance
    blocks: list[_Block] = Field(default_factory=list)
    embedding: list[_Pass] = Field(default_factory=list)
    head: list[_Pass] = Field(default_factory=list)
    optimizer: _Optimizer | None = None
    collectives: list[_Collective] = Field(default_factory=list)
    p2p: list[_Transfer] = Field(default_factory=list)
    host_copy: _HostCopy = _HostCopy()
    host: _Host = _Host()
    fixed_memory_bytes: int | None = Field(default=None, ge=0)
    corrections: _Corrections = _Corrections()


def _fix(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return f"missing; add it ({DOC} lists every key)"
    if kind == "extra_forbidden":
        return f"unknown key; check its spelling against {DOC}"
    if kind == "finite_number":
        return ("NaN or infinite; a figure is a finite number: re-measure it with "
                "`polychip profile` or correct it")
    if kind.startswith(("greater_than", "less_than")):
        return (f"{err.get('input')!r}: {err['msg'].lower()}; a measured time, size or count "
                f"is positive: re-measure it with `polychip profile` or correct it")
    return f"{err['msg']}; see {DOC}"


def _problem(exc: ValidationError, file: str) -> SpecError:
    err = exc.errors()[0]
    more = len(exc.errors()) - 1
    tail = f" (and {more} more problem(s))" if more else ""
    return SpecError(_fix(dict(err)) + tail, file=file, key=key_path(tuple(err["loc"])) or None)


def _points(raw: list[_Pass], section: str, file: str) -> tuple[PassPoint, ...]:
    seen: dict[tuple[int, int, int], int] = {}
    out = []
    for i, p in enumerate(raw):
        key = (p.tp, p.micro_batch, p.seq_len)
        if key in seen:
            raise SpecError(f"tp {p.tp}, micro_batch {p.micro_batch}, seq_len {p.seq_len} is "
                            f"already {section}[{seen[key]}]; keep one figure per point "
                            f"(remove one; {DOC})", file=file, key=f"{section}[{i}]")
        seen[key] = i
        out.append(PassPoint(**p.model_dump()))
    return tuple(out)


def _host_points(raw: list[_HostPoint], file: str) -> tuple[HostPoint, ...]:
    seen: dict[tuple[int, int], int] = {}
    for i, p in enumerate(raw):
        key = (p.micro_batch, p.seq_len)
        if key in seen:
            raise SpecError(f"micro_batch {p.micro_batch}, seq_len {p.seq_len} is already "
                            f"host.micro_batches[{seen[key]}]; keep one figure per point "
                            f"(remove one; {DOC})", file=file, key=f"host.micro_batches[{i}]")
        seen[key] = i
    return tuple(HostPoint(**p.model_dump()) for p in raw)


def profile_from_dict(data: Any, file: str) -> Profile:
    if not isinstance(data, dict) or data.get("kind") != PROFILE_KIND:
        raise SpecError(f"not a polychip profile (no `kind: {PROFILE_KIND}`); make one with "
                        f"`polychip profile` or write one as {DOC} shows", file=file)
    version = data.get("schema_version")
    if version != PROFILE_SCHEMA_VERSION:
        raise SpecError(f"{version!r} is not supported (this polychip reads "
                        f"{PROFILE_SCHEMA_VERSION}); re-run `polychip profile` to remake it",
                        file=file, key="schema_version")
    try:
        raw = _ProfileIn.model_validate(data)
    except ValidationError as exc:
        raise _problem(exc, file) from None
    return Profile(
        chip=resolve_name(raw.chip) or normalise(raw.chip),
        model=ModelShape(**raw.model.model_dump()),
        precision=raw.precision,
        attention=raw.attention,
        provenance=Provenance(**raw.provenance.model_dump()),
        blocks=_points(raw.blocks, "blocks", file),  # type: ignore[arg-type]
        embedding=_points(raw.embedding, "embedding", file),
        head=_points(raw.head, "head", file),
        optimizer_s_per_param=raw.optimizer.seconds_per_param if raw.optimizer else None,
        optimizer_num_params=raw.optimizer.num_params if raw.optimizer else None,
        optimizer_fixed_s=raw.optimizer.fixed_s if raw.optimizer else None,
        collectives=tuple(CollectivePoint(**c.model_dump()) for c in raw.collectives),
        p2p=tuple(TransferPoint(**t.model_dump()) for t in raw.p2p),
        d2h=tuple(TransferPoint(**t.model_dump()) for t in raw.host_copy.d2h),
        h2d=tuple(TransferPoint(**t.model_dump()) for t in raw.host_copy.h2d),
        host=_host_points(raw.host.micro_batches, file),
        host_step_s=raw.host.step_s,
        fixed_memory_bytes=raw.fixed_memory_bytes,
        corrections=Corrections(**raw.corrections.model_dump()),
        file=file,
    )


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    block_keys = ("recompute_bwd_s", "peak_bytes")

    def passes(points: tuple[PassPoint, ...], block: bool) -> list[dict[str, Any]]:
        rows = [asdict(p) for p in points]
        for row in rows:
            for k in (*block_keys, "activation_bytes"):
                if row[k] is None or (not block and k in block_keys):
                    del row[k]
        return rows

    out: dict[str, Any] = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "kind": PROFILE_KIND,
        "chip": profile.chip,
        "model": asdict(profile.model),
        "precision": profile.precision,
        "attention": profile.attention,
        "provenance": asdict(profile.provenance),
        "blocks": passes(profile.blocks, True),
        "embedding": passes(profile.embedding, False),
        "head": passes(profile.head, False),
        "collectives": [asdict(c) for c in profile.collectives],
        "p2p": [asdict(t) for t in profile.p2p],
        "host_copy": {"d2h": [asdict(t) for t in profile.d2h],
                      "h2d": [asdict(t) for t in profile.h2d]},
        "host": {"step_s": profile.host_step_s,
                 "micro_batches": [asdict(h) for h in profile.host]},
        "fixed_memory_bytes": profile.fixed_memory_bytes,
        "corrections": asdict(profile.corrections),
    }
    if profile.optimizer_s_per_param is not None:
        out["optimizer"] = {"seconds_per_param": profile.optimizer_s_per_param,
                            "num_params": profile.optimizer_num_params,
                            "fixed_s": profile.optimizer_fixed_s}
    return out


def save_profile(profile: Profile, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(profile_to_dict(profile), indent=1) + "\n")


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the profile: {exc.strerror}; give the path of a file "
                        f"`polychip profile --out` wrote", file=file) from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"not a JSON (or .yaml) profile: {exc}", file=file) from None
    return profile_from_dict(data, file)


def load_profiles(paths: Sequence[str | Path]) -> tuple[Profile, ...]:
    """One profile per chip type; two files for one chip are an error naming both."""
    out: dict[str, Profile] = {}
    for path in paths:
        profile = load_profile(path)
        if profile.chip in out:
            raise SpecError(f"{profile.chip!r} is also the chip of {out[profile.chip].file}: "
                            f"give one profile per chip type", file=profile.file, key="chip")
        out[profile.chip] = profile
    return tuple(out.values())
