"""A hand-written profile of the `tiny` model (as a user would write one), for the tests of
the file format, the cost model's use of it and the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def block(tp: int, mb: int, seq: int, fwd: float, bwd: float, **kw: Any) -> dict[str, Any]:
    return {"tp": tp, "micro_batch": mb, "seq_len": seq, "fwd_s": fwd, "bwd_s": bwd, **kw}


def tiny_profile(chip: str = "cpu-fast", precision: str = "bf16") -> dict[str, Any]:
    """Blocks at tp 1 and 2, micro-batches 1 and 4, sequence 128; the rest one point each."""
    return {
        "schema_version": 1,
        "kind": "polychip-profile",
        "chip": chip,
        "model": {"name": "tiny", "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2,
                  "ffn_hidden_size": 176, "vocab_size": 256, "mlp": "swiglu"},
        "precision": precision,
        "attention": "fused",
        "provenance": {"device": "hand-written", "device_type": "cpu", "torch_version": "none",
                       "date": "2025-01-01T00:00:00+00:00", "host": "test"},
        "blocks": [
            block(1, 1, 128, 0.010, 0.020, recompute_bwd_s=0.031, activation_bytes=100_000),
            block(1, 4, 128, 0.040, 0.080, recompute_bwd_s=0.121, activation_bytes=400_000),
            block(2, 1, 128, 0.006, 0.012, activation_bytes=50_000),
            block(2, 4, 128, 0.024, 0.048, activation_bytes=200_000),
        ],
        "embedding": [block(1, 1, 128, 0.001, 0.002), block(1, 4, 128, 0.004, 0.008)],
        "head": [block(1, 1, 128, 0.003, 0.006), block(1, 4, 128, 0.012, 0.024)],
        "optimizer": {"seconds_per_param": 2e-9, "num_params": 200_000},
        "collectives": [
            {"op": "all_reduce", "group_size": 2, "message_bytes": 1_000, "seconds": 1e-4},
            {"op": "all_reduce", "group_size": 2, "message_bytes": 1_000_000, "seconds": 1e-3},
        ],
        "p2p": [{"message_bytes": 1_000, "seconds": 2e-5},
                {"message_bytes": 1_000_000, "seconds": 1e-4}],
        "host_copy": {"d2h": [{"message_bytes": 1_000_000, "seconds": 1e-4}], "h2d": []},
        "corrections": {"compute": 1.0, "p2p": 1.0, "grad_sync": 1.0, "optimizer": 1.0},
    }


def write(tmp_path: Path, data: dict[str, Any], name: str = "profile.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path
