"""Plan <-> JSON. Loading validates the shape with pydantic, then the meaning with
`validate_plan`; every problem names its field."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polychip.plan.plan import SCHEMA_VERSION, Baseline, Estimate, Plan, Replica, Stage
from polychip.plan.validate import PlanError, validate_plan
from polychip.spec.cluster import cluster_from_dict, cluster_to_dict
from polychip.spec.errors import PolychipError, SpecError, key_path
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec

KIND = "polychip-plan"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _StageIn(_In):
    layers: tuple[int, int]
    node: int = Field(ge=0)
    local_devices: list[int] = Field(min_length=1)
    chip: str
    tp: int | None = None
    recompute: bool = False


class _ReplicaIn(_In):
    stages: list[_StageIn] = Field(min_length=1)
    batch_size: int = Field(ge=1)
    micro_batch_size: int = Field(ge=1)
    num_micro_batches: int | None = None


class _ModelIn(_In):
    name: str
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    ffn_hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    # Fields added after schema 1 was first written default to Llama's block, so an older
    # plan file reads as it was meant.
    mlp: Literal["swiglu", "geglu", "gelu", "relu"] = "swiglu"
    tie_embeddings: bool = False
    family: Literal["llama", "mistral", "qwen2", "gpt2", "opt", "gpt_neox"] = "llama"
    activation: str = ""
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    position: Literal["rope", "learned"] = "rope"
    max_positions: int = Field(default=0, ge=0)
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    embed_proj_dim: int = Field(default=0, ge=0)
    final_norm: bool = True
    parallel_residual: bool = False
    sliding_window: int = Field(default=0, ge=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    rope_scaling: str = ""
    norm_eps: float = Field(default=1e-5, gt=0)
    num_params: int | None = Field(default=None, ge=1)  # checked against the shape


class _JobIn(_In):
    global_batch: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = "bf16"
    optimizer: Literal["adamw"] = "adamw"
    allow_recompute: bool = True
    allow_zero1: bool = True
    attention: Literal["fused", "eager"] = "fused"
    sequence_parallel: bool = True
    vocab_parallel: bool = True
    overlap_p2p: bool = True
    overlap_grad_sync: bool = True
    grad_reduce_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"


class _PlanIn(_In):
    schema_version: int
    kind: Literal["polychip-plan"] = KIND
    cluster: dict[str, Any]
    model: _ModelIn
    job: _JobIn
    replicas: list[_ReplicaIn] = Field(min_length=1)
    schedule: Literal["1f1b", "gpipe", "interleaved-1f1b", "zb-h1"] = "1f1b"
    virtual_stages: int = Field(default=1, ge=1)
    zero1: bool = False
    estimate: dict[str, Any] | None = None
    baselines: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ideal: dict[str, Any] | None = None
    limit: dict[str, Any] | None = None  # absent in plans written before it existed
    notes: list[str] = Field(default_factory=list)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "schema_version": plan.schema_version,
        "kind": KIND,
        "cluster": cluster_to_dict(plan.cluster),
        "model": plan.model.to_dict() | {"num_params": plan.model.num_params},
        "job": plan.job.to_dict(),
        "schedule": plan.schedule,
        "virtual_stages": plan.virtual_stages,
        "zero1": plan.zero1,
        "replicas": [
            {
                "batch_size": r.batch_size,
                "micro_batch_size": r.micro_batch_size,
                "num_micro_batches": r.num_micro_batches,
                "stages": [
                    {
                        "layers": [s.layer_start, s.layer_end],
                        "node": s.node,
                        "local_devices": list(s.local_devices),
                        "chip": s.chip,
                        "tp": s.tp,
                        "recompute": s.recompute,
                    }
                    for s in r.stages
                ],
            }
            for r in plan.replicas
        ],
        # the schedule the estimate priced, beside its figures (read from the plan on load)
        "estimate": None if plan.estimate is None else {**asdict(plan.estimate),
                                                         "schedule": plan.schedule},
        "baselines": {k: asdict(v) for k, v in plan.baselines.items()},
        "ideal": None if plan.ideal is None else asdict(plan.ideal),
        "limit": None if plan.limit is None else asdict(plan.limit),
        "notes": list(plan.notes),
    }


def _estimate(data: dict[str, Any] | None, where: str) -> Estimate | None:
    if data is None:
        return None
    data = {k: v for k, v in data.items() if k != "schedule"}  # the plan's own, written twice
    try:
        return Estimate(**data)
    except TypeError as exc:
        raise PlanError(f"{where}: {exc}") from None


def _baseline(data: dict[str, Any] | None, where: str) -> Baseline | None:
    if data is None:
        return None
    try:
        return Baseline(**data)
    except TypeError as exc:
        raise PlanError(f"{where}: {exc}") from None


def _model(raw: _ModelIn, where: str) -> ModelSpec:
    """The plan's model; a stated `num_params` must be the count of its shape."""
    try:
        model = ModelSpec(**raw.model_dump(exclude={"num_params"}))
    except PolychipError as exc:
        raise PlanError(f"{where}model: {exc}") from None
    if raw.num_params is not None and raw.num_params != model.num_params:
        raise PlanError(
            f"{where}model.num_params: {raw.num_params} but the model's shape holds "
            f"{model.num_params} parameters (the shape or the count was edited); fix the "
            f"shape, or remove num_params to take the shape's count"
        )
    return model


def plan_from_dict(data: Any, file: str | None = None) -> Plan:
    where = f"{file}: " if file else ""
    if not isinstance(data, dict) or "schema_version" not in data:
        raise PlanError(
            f"{where}not a polychip plan (no `schema_version`); "
            "make one with `polychip plan CLUSTER.yaml --out plan.json`"
        )
    if data["schema_version"] != SCHEMA_VERSION:
        raise PlanError(
            f"{where}schema_version {data['schema_version']!r} is not supported "
            f"(this polychip reads {SCHEMA_VERSION}); re-run `polychip plan` to regenerate it"
        )
    try:
        raw = _PlanIn.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PlanError(f"{where}{key_path(tuple(err['loc']))}: {err['msg']}") from None
    try:
        cluster = cluster_from_dict(raw.cluster)
    except SpecError as exc:  # its message starts with its key path inside the cluster
        raise PlanError(f"{where}cluster{'.' if exc.key else ': '}{exc}") from None
    replicas = []
    for ri, r in enumerate(raw.replicas):
        stages = []
        for si, s in enumerate(r.stages):
            if s.tp is not None and s.tp != len(s.local_devices):
                raise PlanError(
                    f"{where}replicas[{ri}].stages[{si}].tp: {s.tp} but "
                    f"{len(s.local_devices)} local_devices"
                )
            stages.append(
                Stage(s.layers[0], s.layers[1], s.node, tuple(s.local_devices), s.chip, s.recompute)
            )
        if (
            r.num_micro_batches is not None
            and r.num_micro_batches * r.micro_batch_size != r.batch_size
        ):
            raise PlanError(
                f"{where}replicas[{ri}]: num_micro_batches {r.num_micro_batches} x "
                f"micro_batch_size {r.micro_batch_size} != batch_size {r.batch_size}"
            )
        replicas.append(Replica(tuple(stages), r.batch_size, r.micro_batch_size))
    plan = Plan(
        cluster=cluster,
        model=_model(raw.model, where),
        job=TrainingJob(**raw.job.model_dump()),
        replicas=tuple(replicas),
        schedule=raw.schedule,
        virtual_stages=raw.virtual_stages,
        zero1=raw.zero1,
        estimate=_estimate(raw.estimate, f"{where}estimate"),
        baselines={
            k: b
            for k, v in raw.baselines.items()
            if (b := _baseline(v, f"{where}baselines.{k}")) is not None
        },
        ideal=_baseline(raw.ideal, f"{where}ideal"),
        limit=_baseline(raw.limit, f"{where}limit"),
        notes=tuple(raw.notes),
    )
    validate_plan(plan, file=file)
    return plan


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write ``plan`` as JSON (its folder is made if missing: `--out out/plan.json`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(plan_to_dict(plan), indent=1) + "\n")


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: plan file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not a JSON plan file ({exc})") from None
    return plan_from_dict(data, file=str(path))
