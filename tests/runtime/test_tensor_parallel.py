"""Tensor parallelism with and without sequence parallelism and a vocabulary-parallel
embedding, head and cross-entropy: a TP stage computes exactly what one device does, and
pipelines of TP stages train exactly like one process (float64)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from polychip.plan import Plan
from polychip.plan.capabilities import missing_features
from polychip.runtime.errors import RuntimeSetupError
from polychip.runtime.layers import rotary_cos_sin
from polychip.runtime.model import build_full_model, build_stage, loss_fn
from polychip.runtime.tensor_parallel import TensorParallel, part_bounds
from polychip.runtime.topology import build_topology, rank_roles
from polychip.runtime.train import TrainConfig, Trainer

from .distenv import run_ranks
from .plans import TINY4, hybrid_plan, interleaved_plan, pp_plan, with_job
from .reference import single_process

F64 = torch.float64
ATOL = 1e-12
# A vocabulary that 2 does not divide: TP rank 0 holds ids [0, 48), rank 1 [48, 97).
ODD = dataclasses.replace(TINY4, name="tiny4-v97", vocab_size=97)
TIED = dataclasses.replace(ODD, name="tiny4-v97-tied", tie_embeddings=True)
FLAGS = list(itertools.product((False, True), repeat=2))  # (sequence_, vocab_parallel)


# ---- without a process group --------------------------------------------------------------
def test_the_parts_of_a_finer_split_nest_in_the_parts_of_a_coarser_one() -> None:
    for full, parts, finer in itertools.product((5, 96, 97), (1, 2, 3, 4), (1, 2, 3)):
        for part in range(parts):
            start, end = part_bounds(full, part, parts)
            assert part_bounds(full, part * finer, parts * finer)[0] == start
            assert part_bounds(full, (part + 1) * finer - 1, parts * finer)[1] == end
    assert [part_bounds(97, r, 2) for r in range(2)] == [(0, 48), (48, 97)]


def test_vocabulary_parallel_ranks_hold_rows_of_the_same_initial_model() -> None:
    full = dict(build_full_model(ODD, seed=3, dtype=F64).named_parameters())
    for rank in range(2):
        tp = TensorParallel(2, rank, vocab_parallel=True)
        stage = build_stage(ODD, 0, 4, seed=3, dtype=F64, tp=tp)
        assert stage.embed is not None and stage.head is not None
        assert stage.embed.weight.shape == stage.head.weight.shape == (48 + rank, 16)
        for name, p in stage.named_parameters():
            assert torch.equal(p, stage.shard(name, full[name])), name
    tied = build_stage(TIED, 0, 4, tp=TensorParallel(2, 1, vocab_parallel=True))
    assert tied.head is not None and tied.head.weight is tied.embed.weight  # type: ignore[union-attr]


def test_grouped_query_attention_shares_key_value_heads_without_copies() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 8, 6, generator=g, dtype=F64)
    k, v = (torch.randn(2, 2, 8, 6, generator=g, dtype=F64) for _ in range(2))
    shared = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    copied = F.scaled_dot_product_attention(q, k.repeat_interleave(2, dim=1),
                                            v.repeat_interleave(2, dim=1), is_causal=True)
    torch.testing.assert_close(shared, copied, rtol=0, atol=1e-15)


def test_sequence_parallelism_needs_a_sequence_length_the_tp_degree_divides() -> None:
    plan = with_job(hybrid_plan(), seq_len=9)
    with pytest.raises(RuntimeSetupError, match=r"replicas\[0\]\.stages\[1\]: tensor-"
                                                r"parallel degree 2.*seq_len=9.*false"):
        rank_roles(plan, emulate=True)
    rank_roles(with_job(plan, sequence_parallel=False), emulate=True)


# ---- one TP stage on 2 ranks against the same stage on one device ------------------------
def _stage_worker(rank: int, world_size: int) -> None:
    group = dist.new_group([0, 1])
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, ODD.vocab_size, (2, 9), generator=g)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    for model in (ODD, TIED):
        full = build_full_model(model, seed=5, dtype=F64)
        want = loss_fn(full(inputs), targets)
        want.backward()
        grads = {n: p.grad for n, p in full.named_parameters()}
        for (sp, vp), recompute in [*((f, False) for f in FLAGS), ((True, True), True)]:
            case = f"{model.name} sp={sp} vp={vp} recompute={recompute}"
            tp = TensorParallel(2, rank, group, sequence_parallel=sp, vocab_parallel=vp)
            stage = build_stage(model, 0, 4, seed=5, dtype=F64, tp=tp, recompute=recompute)
            shapes: list[torch.Size] = []
            stage.layers["1"].register_forward_hook(
                lambda m, i, o, shapes=shapes: shapes.append(o.shape))
            logits = stage(inputs)
            assert shapes == [(2, 4 if sp else 8, 16)], case  # the residual stream's part
            assert logits.shape == (2, 8, 48 + rank if vp else 97), case  # never gathered
            loss = stage.loss(logits, targets)
            loss.backward()
            stage.sum_partial_grads_()
            torch.testing.assert_close(loss, want, rtol=0, atol=ATOL, msg=case)
            for name, p in stage.named_parameters():
                torch.testing.assert_close(p.grad, stage.shard(name, grads[name]), rtol=0,
                                           atol=ATOL, msg=f"{case}: {name}")
    _check_block_keeps_sequence_parts(rank, group)


def _check_block_keeps_sequence_parts(rank: int, group: object) -> None:
    """Under sequence parallelism a block keeps no whole-sequence [b, s, h] tensor for its
    backward pass (the column-parallel inputs are kept as the rank's s/t positions and
    gathered again), so its activation memory divides by t; without it, it keeps them."""
    wide = dataclasses.replace(ODD, ffn_hidden_size=48)  # FFN parts of 24 wide, not h = 16
    for sp in (False, True):
        tp = TensorParallel(2, rank, group, sequence_parallel=sp)
        block = build_stage(wide, 1, 2, dtype=F64, tp=tp).layers["1"]
        x = torch.randn(2, 4 if sp else 8, 16, dtype=F64, requires_grad=True)
        cos, sin = rotary_cos_sin(8, wide.head_dim, x)
        kept: list[int] = []  # sizes: a linear layer keeps its input flattened to 2-d
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t, kept=kept: kept.append(t.numel()) or t, lambda t: t):
            out = block(x, cos, sin)
        out.sum().backward()  # the gathers in the backward pass run as well
        whole = 2 * 8 * 16  # b s h; nothing else of the block has this size
        assert (whole in kept) == (not sp), kept


@pytest.mark.dist
def test_a_tp_stage_computes_what_one_device_does(tmp_path: Path) -> None:
    """Embedding, 4 blocks, head and loss on a TP pair, with and without sequence and
    vocabulary parallelism (an odd vocabulary; tied and untied; with recompute): the loss and
    every gradient (each rank's part of it) equal the single-device model's."""
    run_ranks(_stage_worker, 2, tmp_path)


# ---- pipelines of TP stages train like one process ---------------------------------------
def _config(tokens: Path) -> TrainConfig:
    return TrainConfig(steps=3, dtype="float64", optimizer="adamw", lr=0.05, data=str(tokens))


def _train_worker(rank: int, world_size: int, plans: list[Plan], tokens: Path) -> None:
    config, references = _config(tokens), {}
    for plan in plans:
        job = plan.job
        case = f"{plan.model.name} sp={job.sequence_parallel} vp={job.vocab_parallel}"
        key = (plan.model, plan.job.global_batch)  # what the reference depends on
        if key not in references:
            references[key] = single_process(plan, config)
        losses, params = references[key]
        trainer = Trainer(plan, config, build_topology(plan, rank, emulate=False,
                                                       timeout=config.timeout))
        records = trainer.run(config.steps)
        if trainer.role.last_stage:
            got = [r.global_loss for r in records]
            assert got == pytest.approx(losses, abs=ATOL), case
        for name, p in trainer.model.named_parameters():
            torch.testing.assert_close(p, trainer.model.shard(name, params[name]), rtol=0,
                                       atol=ATOL, msg=f"rank {rank} {name} ({case})")


def _flag_matrix(plan: Plan) -> list[Plan]:
    return [with_job(plan, sequence_parallel=sp, vocab_parallel=vp) for sp, vp in FLAGS]


def _tokens(tmp_path: Path) -> Path:
    """Token ids spread over the whole vocabulary (every TP rank's range is looked up and is
    some targets' owner); the byte corpus would leave ids >= 128 unused."""
    path = tmp_path / "tokens.bin"
    rng = np.random.default_rng(0)
    rng.integers(0, ODD.vocab_size, 4096, dtype=np.uint16).tofile(path)
    return path


def _head_on_a_tp_stage() -> Plan:
    """The hybrid layout: replica 0 with 1 layer + embedding on a slow chip, 3 layers + head
    on a fast TP pair (6 samples, 3 micro-batches); replica 1 all on one slow chip (TP 1):
    the head and layers 1-3 are reduced across TP degrees 2 and 1."""
    plan = hybrid_plan()
    return pp_plan(plan.cluster, [([(0, 1, 1, (0,), "cpu-slow"), (1, 4, 0, (0, 1), "cpu-fast")],
                                   6, 2), ([(0, 4, 1, (1,), "cpu-slow")], 2, 1)], model=ODD)


def _embedding_on_a_tp_stage() -> Plan:
    """One replica: 3 layers + embedding on a slow TP pair, 1 layer + head on a fast TP pair
    (uneven layers, 4 micro-batches, GPipe): TP stage to TP stage."""
    plan = hybrid_plan()
    return pp_plan(plan.cluster, [([(0, 3, 1, (0, 1), "cpu-slow"),
                                    (3, 4, 0, (0, 1), "cpu-fast")], 8, 2)],
                   model=ODD, schedule="gpipe")


def _tied_on_one_stage() -> Plan:
    """Tied embedding and head on one stage, in three replicas of TP degrees 2, 1 and 1."""
    plan = hybrid_plan()
    return pp_plan(plan.cluster, [([(0, 4, 0, (0, 1), "cpu-fast")], 4, 2),
                                  ([(0, 4, 1, (0,), "cpu-slow")], 2, 1),
                                  ([(0, 4, 1, (1,), "cpu-slow")], 2, 2)], model=TIED)


def _interleaved_tp_stage_feeding_itself() -> Plan:
    """Interleaved 1F1B, 2 chunks per stage: replica 0 is one TP pair feeding its chunks to
    itself (each TP rank keeps its part), replica 1 two slow chips."""
    plan = hybrid_plan()
    staged = pp_plan(plan.cluster, [([(0, 4, 0, (0, 1), "cpu-fast")], 4, 2),
                                    ([(0, 2, 1, (0,), "cpu-slow"), (2, 4, 1, (1,), "cpu-slow")],
                                     4, 2)], model=ODD, schedule="interleaved-1f1b")
    return dataclasses.replace(staged, virtual_stages=2)


@pytest.mark.dist
def test_pipelines_of_tp_stages_train_like_one_process(tmp_path: Path) -> None:
    """Each layout with sequence parallelism on and off and vocabulary parallelism on and
    off, then interleaved 1F1B with both on (a TP pair holding the last model chunk, with
    the head; a TP pair feeding itself): after 3 AdamW steps every rank's part of every
    parameter, and the losses, equal single-process training to 1e-12. One set of processes
    for all (starting them costs more than training)."""
    plans = [p for layout in (_head_on_a_tp_stage, _embedding_on_a_tp_stage,
                              _tied_on_one_stage) for p in _flag_matrix(layout())]
    plans += [dataclasses.replace(interleaved_plan(), model=ODD),
              _interleaved_tp_stage_feeding_itself()]
    for plan in plans:  # the capability table says the runtime executes them
        fields = {m.field for m in missing_features(plan)}
        assert not fields & {"job.sequence_parallel", "job.vocab_parallel"}
    run_ranks(_train_worker, 4, tmp_path, plans, _tokens(tmp_path))
