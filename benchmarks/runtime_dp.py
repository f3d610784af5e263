"""Heterogeneous data parallelism, measured side by side on this machine.

1. Emulated chips with speeds 1 : 1 : 2 : 4 (examples/clusters/cpu-test.yaml, the `tiny` model):
   tokens/s of the planned split (batch shares proportional to speed) vs the naive even split
   of the same replicas vs the ideal (sum of the replicas' own throughputs), in interleaved
   rounds; measured speed-up vs the cost model's (theoretical) one.
2. Equal ranks, no emulation: polychip's training step vs plain DistributedDataParallel on the
   same model (26 M parameters: several 25 MiB gradient buckets, so overlapping the sync with
   the backward matters), data and optimizer (same process count, fp32), alternating step by
   step; the median of the per-pair time ratios (`overhead_vs_ddp`).
3. Two islands of several ranks (`runtime_bridge.py`): the bytes an island leader sends over
   the bridge ÷ the cost model's (`bridge_bytes_ratio`), and the sharded bridge's time vs the
   leader-only one it replaced.

    PYTHONPATH=src python benchmarks/runtime_dp.py --json runtime_dp.json
    PYTHONPATH=src python benchmarks/runtime_dp.py --quick --json quick.json   # seconds, tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from polychip.plan import Plan, Replica, Stage, validate_plan
from polychip.runtime.compare import CompareTask, even_batch_split
from polychip.runtime.emulate import phase_targets
from polychip.runtime.launch import launch_local
from polychip.runtime.session import estimate_tokens_per_s
from polychip.runtime.train import TrainConfig
from polychip.spec.cluster import cluster_from_dict, load_cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import PRESETS, ModelSpec
from runtime_bridge import bridge

ROOT = Path(__file__).resolve().parents[1]
TINY = PRESETS["tiny"]
# tens of millions of parameters: 104 MB of fp32 gradients, five 25 MiB buckets
BENCH = ModelSpec("bench-26m", num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=8,
                  ffn_hidden_size=1408, vocab_size=256)
SEQ_LEN, GLOBAL_BATCH, MICRO_BATCH = 128, 32, 4
CHIPS = ((0, 0, "cpu-slow"), (0, 1, "cpu-slow"), (1, 0, "cpu-fast"), (2, 0, "cpu-mid"))
SPEEDS = {"cpu-slow": 1, "cpu-mid": 2, "cpu-fast": 4}


def proportional_plan() -> Plan:
    cluster = load_cluster(ROOT / "examples" / "clusters" / "cpu-test.yaml")
    total = sum(SPEEDS[c] for _, _, c in CHIPS)
    shares = [GLOBAL_BATCH * SPEEDS[c] // total for _, _, c in CHIPS]  # 4, 4, 16, 8
    plan = Plan(cluster, TINY, TrainingJob(GLOBAL_BATCH, SEQ_LEN), tuple(
        Replica((Stage(0, TINY.num_layers, n, (d,), c),), s, MICRO_BATCH)
        for (n, d, c), s in zip(CHIPS, shares, strict=True)))
    validate_plan(plan)
    return plan


def model_ideal_tokens_per_s(plan: Plan) -> float:
    """Cost model: the sum over ranks of each chip's own forward+backward throughput."""
    return sum(rep.micro_batch_size * SEQ_LEN / phase_targets(plan, i, 0).micro_batch_s
               for i, rep in enumerate(plan.replicas))


def heterogeneous(rounds: int, steps: int, dilation: float | None = None) -> dict:
    planned = proportional_plan()
    even = even_batch_split(planned)
    config = TrainConfig(steps=steps, emulate=True, dilation=dilation)
    task = CompareTask((planned, even), (steps, max(2, steps // 2)), config, rounds=rounds)
    summaries = launch_local(planned, task)[0]
    runs_p, runs_e = summaries[0::2], summaries[1::2]
    p = statistics.median(s.tokens_per_s for s in runs_p)
    e = statistics.median(s.tokens_per_s for s in runs_e)
    ideal = statistics.median(s.ideal_tokens_per_s for s in runs_p)
    theoretical = estimate_tokens_per_s(planned) / estimate_tokens_per_s(even)
    return {
        "shares_planned": [r.batch_size for r in planned.replicas],
        "shares_even": [r.batch_size for r in even.replicas],
        "dilation_start": summaries[0].dilation_start,
        "dilation": max(s.dilation or 0.0 for s in summaries),
        "rounds": rounds,
        "planned_tokens_per_s": p,
        "even_tokens_per_s": e,
        "ideal_tokens_per_s_measured": ideal,
        "ideal_tokens_per_s_model": model_ideal_tokens_per_s(planned),
        "planned_estimate_tokens_per_s": estimate_tokens_per_s(planned),
        "even_estimate_tokens_per_s": estimate_tokens_per_s(even),
        "measured_speedup": p / e,
        "theoretical_speedup": theoretical,
        "speedup_ratio": (p / e) / theoretical,
        "planned_over_ideal": p / ideal,
        "planned_tokens_per_s_rounds": [s.tokens_per_s for s in runs_p],
        "even_tokens_per_s_rounds": [s.tokens_per_s for s in runs_e],
        "overruns": sum(s.num_overruns for s in summaries),
        "emulation_lost_fraction": max(s.lost_fraction for s in summaries),
        "phases": sum(s.num_phases for s in summaries),
    }


# ---- overhead vs DistributedDataParallel --------------------------------------------------
@dataclass(frozen=True)
class OverheadTask:
    """Alternating polychip and DDP steps (pairs, so that both see the same host load);
    rank 0 returns the step times."""

    config: TrainConfig
    pairs: int
    warmup_pairs: int = 10
    emulate: bool = False

    @property
    def timeout(self) -> timedelta:
        return self.config.timeout

    def __call__(self, plan: Plan, rank: int) -> dict | None:
        from torch.nn.parallel import DistributedDataParallel

        from polychip.runtime.model import build_stage, loss_fn
        from polychip.runtime.topology import build_topology
        from polychip.runtime.train import Trainer, make_optimizer

        trainer = Trainer(plan, self.config, build_topology(plan, rank, emulate=False))
        role = trainer.role
        ddp = DistributedDataParallel(build_stage(plan.model, 0,
                                                  plan.model.num_layers, seed=0),
                                      gradient_as_bucket_view=True)
        opt = make_optimizer(self.config, list(ddp.parameters()))
        stream = trainer.stream

        def ddp_step(step: int) -> float:
            begin = time.perf_counter()
            x, y = stream.batch_for(step, role.samples)
            opt.zero_grad(set_to_none=False)
            loss_fn(ddp(x), y).backward()
            opt.step()
            return time.perf_counter() - begin

        times: dict[str, list[float]] = {"polychip": [], "ddp": []}
        for i in range(self.warmup_pairs + self.pairs):
            ours, theirs = trainer.step(i).seconds, ddp_step(i)
            if i >= self.warmup_pairs:
                times["polychip"].append(ours)
                times["ddp"].append(theirs)
        return times if rank == 0 else None


def overhead(pairs: int, ranks: int, model: ModelSpec, warmup_pairs: int = 10) -> dict:
    cluster = cluster_from_dict({"name": "equal", "nodes": [
        {"chip": "cpu-slow", "count": 1, "chips_per_node": ranks, "nic_gbps": 10}]})
    per_rank = 4
    job = TrainingJob(per_rank * ranks, SEQ_LEN, precision="fp32")  # as DDP: fp32 throughout
    plan = Plan(cluster, model, job, tuple(
        Replica((Stage(0, model.num_layers, 0, (d,), "cpu-slow"),), per_rank, per_rank)
        for d in range(ranks)))
    validate_plan(plan)
    times = launch_local(plan, OverheadTask(TrainConfig(), pairs, warmup_pairs))[0]
    ours, ddp = times["polychip"], times["ddp"]
    ratios = [a / b for a, b in zip(ours, ddp, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"ranks": ranks, "model": model.name, "model_params": model.num_params,
            "samples_per_rank": per_rank, "seq_len": SEQ_LEN, "pairs": pairs,
            "polychip_step_s": statistics.median(ours), "ddp_step_s": statistics.median(ddp),
            "overhead": statistics.median(ratios) - 1.0,
            "overhead_quartiles": [q - 1.0 for q in quartiles]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=10,
                        help="planned-split steps per round (even split: half)")
    parser.add_argument("--ddp-ranks", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=100,
                        help="alternating polychip/DDP step pairs (default 100)")
    parser.add_argument("--island-ranks", type=int, default=2,
                        help="ranks per island in the bridge benchmark (default 2)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed syncs of each bridge scheme (default 20)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in seconds: the tiny model, few steps (no figures)")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    if args.quick:
        het = heterogeneous(1, 2, dilation=3.0)
        ovh = overhead(3, 2, TINY, warmup_pairs=1)
        brg = bridge(TINY, args.island_ranks, 32, repeats=2)
    else:
        het = heterogeneous(args.rounds, args.steps)
        ovh = overhead(args.pairs, args.ddp_ranks, BENCH)
        brg = bridge(BENCH, args.island_ranks, SEQ_LEN, args.repeats)
    report(het, ovh, brg, args.rounds if not args.quick else 1)
    print(f"({time.perf_counter() - begin:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "overhead_vs_ddp": ovh["overhead"], "bridge_bytes_ratio": brg["bridge_bytes_ratio"],
            "quick": args.quick, "heterogeneous": het, "overhead": ovh, "bridge": brg},
            indent=2))
    return 0


def report(het: dict, ovh: dict, brg: dict, rounds: int) -> None:
    dilation = f"{het['dilation']:g}"
    if het["dilation"] != het["dilation_start"]:
        dilation = f"{het['dilation_start']:g} raised to {dilation}"
    print(f"\nEmulated chips (speeds 1:1:2:4, dilation {dilation}; tokens/s in emulated chip "
          f"time, median of {rounds})")
    print("| split | shares | measured tok/s | cost-model estimate tok/s |")
    print("|---|---|---:|---:|")
    print(f"| planned (proportional) | {het['shares_planned']} | "
          f"{het['planned_tokens_per_s']:,.0f} | {het['planned_estimate_tokens_per_s']:,.0f} |")
    print(f"| even | {het['shares_even']} | {het['even_tokens_per_s']:,.0f} | "
          f"{het['even_estimate_tokens_per_s']:,.0f} |")
    print(f"| ideal (sum of replicas) | | {het['ideal_tokens_per_s_measured']:,.0f} | "
          f"{het['ideal_tokens_per_s_model']:,.0f} |")
    print(f"\nspeed-up planned/even: measured {het['measured_speedup']:.3f}, theoretical "
          f"{het['theoretical_speedup']:.3f} -> {het['speedup_ratio']:.1%} of theoretical "
          f"(target >= 90 %); planned/ideal {het['planned_over_ideal']:.1%}; overruns "
          f"{het['overruns']} of {het['phases']} phases, costing at most "
          f"{het['emulation_lost_fraction']:.1%} of a run's time")
    q1, _, q3 = ovh["overhead_quartiles"]
    print(f"\nEqual ranks ({ovh['ranks']}, {ovh['model']}, {ovh['model_params'] / 1e6:.1f} M "
          f"parameters, no emulation): step {ovh['polychip_step_s'] * 1e3:.1f} ms polychip vs "
          f"{ovh['ddp_step_s'] * 1e3:.1f} ms DDP (medians; {ovh['pairs']} alternating pairs) "
          f"-> overhead_vs_ddp {ovh['overhead']:+.1%} (median of pair ratios, quartiles "
          f"{q1:+.1%} .. {q3:+.1%}; target <= 3 %)")
    print(f"\nTwo islands of {brg['ranks_per_island']} ranks: island leader's bridge bytes "
          f"{brg['leader_bridge_bytes_measured'] / 1e6:.2f} MB measured vs "
          f"{brg['leader_bridge_bytes_model'] / 1e6:.2f} MB modelled -> bridge_bytes_ratio "
          f"{brg['bridge_bytes_ratio']:.3f} (target 1; leader-only: "
          f"{brg['leader_only_bridge_bytes'] / 1e6:.2f} MB); sync "
          f"{brg['sync_s']['sharded'] * 1e3:.1f} ms sharded vs "
          f"{brg['sync_s']['leader_only'] * 1e3:.1f} ms leader-only, bridge step "
          f"{brg['bridge_step_s']['sharded'] * 1e3:.1f} vs "
          f"{brg['bridge_step_s']['leader_only'] * 1e3:.1f} ms (ratio "
          f"{brg['bridge_step_sharded_over_leader_only']:.2f}; target <= 1/"
          f"{brg['ranks_per_island']} + latency on separate hosts)")


if __name__ == "__main__":
    sys.exit(main())
