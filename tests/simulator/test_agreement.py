"""The simulation against the planner's analytic estimate (`CostModel.evaluate`), on the
cost model's own durations: where they agree, how closely, and why they differ.

Measured (benchmarks/RESULTS-simulator.md has the table):
- GPipe, and the gradient sync without overlap: equal to round-off, on pure data parallelism
  inside a node, across nodes sharing their NICs, with TP pieces and across islands (both
  price the hops of the collectives' one description).
- 1F1B on balanced stages: within 0.05 %. Stage s holds at most S - s micro-batches, so
  the transfers of a round trip sit on the cycle; the closed form charges each micro-batch
  the round trip over the window when that exceeds the slowest stage or link
  (costmodel/pipeline.py). It charges it for all M - 1 micro-batches after the first, the
  replay only once the window is full: the closed form is the slower by round-off.
- Neighbours with different stage times across the host-staged bridge (h800-910b's plan):
  within 0.5 %; the closed form charges the round trip of every run of consecutive stages
  over its window, not only the suffixes.
- Pipelines sharing a NIC: the closed form gives every transfer the whole NIC; the
  simulation shares it (8 pipelines through each NIC: about 5 % slower).
- Gradient syncs of stages sharing a node's NIC: the replay shares it while both run, the
  closed form runs them one after the other through it: the same end, within 1e-4.
- A stage that finishes early runs its optimizer step while others still compute; the
  closed form adds the slowest optimizer step after the slowest pipeline.
"""

from __future__ import annotations

import dataclasses

import pytest

from polychip.costmodel import CostModel
from polychip.simulator import simulate

from .plans import MIXED, cluster, make_plan

H800 = cluster({"chip": "h800", "count": 8, "chips_per_node": 8, "nic_gbps": 400})


def analytic(plan):
    cm = CostModel(plan.cluster, plan.model, plan.job)
    return cm.evaluate(plan.replicas, plan.schedule, plan.zero1)


def llama(cl, replicas, schedule="1f1b", m=8, overlap=True):
    plan = make_plan(
        cl, replicas, model="llama2-7b", micro_batches=m, seq_len=4096, schedule=schedule
    )
    return with_overlap(plan, overlap)


def with_overlap(plan, overlap):
    """The plan with the job's gradient sync overlapped with the backward or not: the
    simulation and the closed form both follow it."""
    return dataclasses.replace(plan, job=dataclasses.replace(plan.job, overlap_grad_sync=overlap))


FOUR_STAGES = [(8, 0, 8), (8, 1, 8), (8, 2, 8), (8, 3, 8)]
TWO_REPLICAS = [FOUR_STAGES, [(8, 4 + i, 8) for i in range(4)]]


@pytest.mark.parametrize("m", [4, 16])
def test_gpipe_and_the_allreduce_agree_to_round_off(m):
    plan = llama(H800, TWO_REPLICAS, "gpipe", m, overlap=False)
    sim, ana = simulate(plan), analytic(plan)
    assert sim.pipeline_s == pytest.approx(ana.pipeline_s, rel=1e-9)
    assert sim.dp_sync_s == pytest.approx(ana.dp_sync_s, rel=1e-9)
    assert sim.step_time_s == pytest.approx(ana.step_time_s, rel=1e-9)


def test_the_hierarchical_allreduce_across_islands_agrees_to_round_off():
    plan = llama(MIXED, [[(32, 0, 8)], [(16, 2, 8), (16, 3, 8)]], "gpipe", overlap=False)
    sim, ana = simulate(plan), analytic(plan)
    assert ana.dp_sync_s > 0.3  # 7B of gradients through the bridge: a big share of the step
    assert sim.dp_sync_s == pytest.approx(ana.dp_sync_s, rel=1e-9)


@pytest.mark.parametrize("m", [4, 16, 32])
def test_1f1b_on_balanced_stages_agrees_with_the_closed_form_within_0_1_percent(m):
    for replicas in ([FOUR_STAGES], TWO_REPLICAS):
        plan = llama(H800, replicas, m=m, overlap=False)
        ratio = simulate(plan).step_time_s / analytic(plan).step_time_s
        assert ratio == pytest.approx(1.0, abs=1e-3)


def test_1f1b_without_communication_cost_matches_the_closed_form():
    free = cluster(
        {"chip": "h800", "count": 4, "chips_per_node": 8, "nic_gbps": 1e12}, latency_us=0.0
    )
    plan = llama(free, [FOUR_STAGES], m=16)
    ratio = simulate(plan).pipeline_s / analytic(plan).pipeline_s
    assert ratio == pytest.approx(1.0, abs=2e-3)  # stages differ only by embedding / head


def test_pipelines_sharing_a_nic_are_slower_than_the_closed_form_says():
    eight = [[(8, s, 1) for s in range(4)] for _ in range(8)]  # stage s of all on node s
    plan = llama(H800, eight, overlap=False)
    sim = simulate(plan)
    ratio = sim.pipeline_s / analytic(plan).pipeline_s
    assert 1.03 < ratio < 1.09
    assert len(sim.recording.classes) == 1  # eight alike pipelines, replayed once


def test_an_early_finishing_stage_hides_its_optimizer_step():
    plan = llama(MIXED, [[(16, 0, 8), (16, 2, 8)]], m=8)  # the 910b stage is the slow one
    sim, ana = simulate(plan), analytic(plan)
    assert sim.pipeline_s == pytest.approx(ana.pipeline_s, rel=1e-6)
    assert sim.optimizer_s < ana.optimizer_s
    assert sim.step_time_s < ana.step_time_s


def test_overlap_hides_the_gradient_sync_of_stages_that_finish_first():
    # Each H800 node with eight 400 Gbit/s NICs: a stage's 8 TP ranks sync through them
    eight_nics = cluster({"chip": "h800", "count": 8, "chips_per_node": 8, "nic_gbps": 3200})
    heavy_last = [[(n, i, 8) for i, n in enumerate([2, 6, 10, 14])]]
    heavy_last.append([(n, 4 + i, 8) for i, n in enumerate([2, 6, 10, 14])])
    plan = llama(eight_nics, heavy_last)
    hidden, exposed = simulate(plan), simulate(with_overlap(plan, False))
    assert hidden.dp_sync_s < 0.8 * exposed.dp_sync_s
    assert hidden.step_time_s < exposed.step_time_s
    # The closed form: each segment's sync starts when its holders' last backwards end. Its
    # stage ends come from the 1F1B closed form (0.5 % off the replay here), so pipeline and
    # exposed sync together agree within that; without overlap, the sync to round-off.
    ana = analytic(plan)
    assert ana.dp_sync_s < 0.4 * analytic(with_overlap(plan, False)).dp_sync_s
    sim_end, ana_end = hidden.pipeline_s + hidden.dp_sync_s, ana.pipeline_s + ana.dp_sync_s
    assert ana_end == pytest.approx(sim_end, rel=5e-3)
    assert analytic(with_overlap(plan, False)).dp_sync_s == pytest.approx(exposed.dp_sync_s)


@pytest.mark.parametrize(("schedule", "overlap"), [("gpipe", False), ("1f1b", False),
                                                   ("1f1b", True)])
def test_syncs_of_two_stages_sharing_a_node_take_turns_at_its_nic(schedule, overlap):
    """Each replica's two TP-4 stages share a node: their segments' all-reduces cross the
    same NIC. The replay shares it between them while both run; the closed form lets the
    later in the global order wait for the earlier (the same end: the NIC does the same
    work either way). Priced each as if alone, the exposed sync was half the replay's."""
    two_nodes = cluster({"chip": "h800", "count": 2, "chips_per_node": 8, "nic_gbps": 400})
    plan = llama(two_nodes, [[(16, 0, 4), (16, 0, 4)], [(16, 1, 4), (16, 1, 4)]], schedule,
                 m=8, overlap=overlap)
    sim, ana = simulate(plan), analytic(plan)
    assert ana.dp_sync_s == pytest.approx(sim.dp_sync_s, rel=1e-3)
    assert ana.pipeline_s + ana.dp_sync_s == pytest.approx(sim.pipeline_s + sim.dp_sync_s,
                                                           rel=1e-4)


def test_the_h800_910b_plan_replays_within_half_a_percent_of_the_closed_form():
    from pathlib import Path

    from polychip.planner import plan_job
    from polychip.spec.cluster import load_cluster
    from polychip.spec.job import TrainingJob
    from polychip.spec.model import load_model

    examples = Path(__file__).resolve().parents[2] / "examples" / "clusters"
    plan = plan_job(
        load_cluster(examples / "h800-910b.yaml"),
        load_model("llama3-70b"),
        TrainingJob(global_batch=512, seq_len=4096),
    )
    sim, ana = simulate(plan), analytic(plan)
    assert sim.pipeline_s == pytest.approx(ana.pipeline_s, rel=5e-3)


# ---- gradient sync: analytic and simulated price the same description --------------------
# They differed ~4-8x on pure data parallelism across nodes sharing a NIC: the closed form
# charged every hop of a ring spanning nodes at a chip's share of the NIC (nic / chips per
# node), the replay let the ring -- which visits ranks in node order and so crosses each NIC
# once per direction -- use the whole NIC, and counted a TP stage as one member sending 1/tp
# of the gradient through its NIC. Both now price the hops of plan/collectives.py's
# description (costmodel/gradsync.py), ranks as members: uncontended they agree to round-off.
SYNC_CASES = {
    "8 replicas inside one node": (H800, [[(32, 0, 1)]] * 8),
    "16 replicas on 2 nodes sharing their NICs": (
        cluster({"chip": "h800", "count": 2, "chips_per_node": 8, "nic_gbps": 400}),
        [[(32, n, 1)] for n in (0, 1) for _ in range(8)]),
    "8 replicas, 4 on each of 2 nodes": (
        cluster({"chip": "h800", "count": 2, "chips_per_node": 8, "nic_gbps": 400}),
        [[(32, n, 1)] for n in (0, 1) for _ in range(4)]),
    "TP 8 and TP 4 replicas on 3 nodes": (H800, [[(32, 0, 8)], [(32, 1, 4)], [(32, 2, 4)]]),
    "across islands, 8 h800 and 16 910b": (
        MIXED, [[(32, 0, 1)] for _ in range(8)] + [[(32, n, 1)] for n in (2, 3) for _ in range(8)]),
    "across islands, TP 8 pipelines and 910b": (
        MIXED, [[(16, 0, 8), (16, 1, 8)], [(16, 2, 4), (16, 3, 4)], [(16, 4, 8), (16, 5, 8)]]),
}


@pytest.mark.parametrize("case", sorted(SYNC_CASES))
def test_analytic_and_simulated_gradient_sync_agree(case):
    cl, replicas = SYNC_CASES[case]
    plan = llama(cl, replicas, "gpipe", m=1, overlap=False)
    sim, ana = simulate(plan), analytic(plan)
    assert ana.dp_sync_s > 0
    assert sim.dp_sync_s == pytest.approx(ana.dp_sync_s, rel=1e-9)
