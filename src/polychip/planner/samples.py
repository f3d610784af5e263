"""Seeded random small clusters and small models: the inputs on which the fast planner is
compared with the exhaustive one (tests/planner, benchmarks/planner.py)."""

from __future__ import annotations

import random
from typing import Any

from polychip.spec.cluster import Cluster, cluster_from_dict
from polychip.spec.job import TrainingJob
from polychip.spec.model import PRESETS, ModelSpec

# bf16-capable catalog chips of several vendors (fp16-only chips would need --precision fp16)
CHIP_POOL = ("h800", "a100-80g", "a100-40g", "h20", "ascend-910b", "mi300x", "l40s", "rtx4090")

# 8 layers, ~0.8 B parameters: small enough for the oracle, big enough that memory and
# links matter on 24-48 GiB chips at long sequences.
SMALL8 = ModelSpec("small8", 8, 2048, 16, 4, 5632, 32000)


def random_cluster(seed: int, max_chips: int = 32, max_types: int = 3) -> Cluster:
    rng = random.Random(seed)
    chips = rng.sample(CHIP_POOL, rng.randint(2, max_types))
    nodes: list[dict[str, Any]] = []
    left = max_chips
    for chip in chips:
        per_node = rng.choice([c for c in (1, 2, 4, 8) if c <= max(1, left // 2)] or [1])
        count = rng.randint(1, max(1, min(2, left // per_node - (len(chips) - len(nodes) - 1))))
        count = max(1, count)
        left -= per_node * count
        nodes.append(
            {
                "chip": chip,
                "count": count,
                "chips_per_node": per_node,
                "nic_gbps": rng.choice([25, 100, 200, 400]),
            }
        )
    return cluster_from_dict(
        {"name": f"random-{seed}", "nodes": nodes, "network": {"kind": "roce", "latency_us": 10}}
    )


def random_case(seed: int, max_chips: int = 32) -> tuple[Cluster, ModelSpec, TrainingJob]:
    """A cluster, a model (tiny or small8) and a job with a small global batch."""
    rng = random.Random(10_000 + seed)
    cluster = random_cluster(seed, max_chips)
    model = rng.choice([PRESETS["tiny"], SMALL8])
    seq = 512 if model.name == "tiny" else rng.choice([2048, 8192])
    job = TrainingJob(global_batch=rng.choice([4, 8, 16, 32]), seq_len=seq)
    return cluster, model, job
