"""The job's options shared by the commands that make a job (`plan`, `demo`): batch, length,
and how the job runs (docs/cost-model.md, "How the job runs")."""

from __future__ import annotations

import argparse

from polychip.spec.job import ATTENTIONS, PRECISIONS, REDUCE_DTYPES, TrainingJob


def add_run_options(p: argparse.ArgumentParser) -> None:
    """How the job runs: defaults are what polychip's runtime does; set otherwise to
    estimate a job as another runtime (Megatron-LM, DeepSpeed) runs it."""
    g = p.add_argument_group("how the job runs (defaults: polychip's runtime)")
    g.add_argument("--precision", choices=PRECISIONS, default="bf16",
                   help="compute precision; bf16/fp16 keep fp32 master weights (default bf16)")
    g.add_argument("--attention", choices=ATTENTIONS, default="fused",
                   help="fused (flash/SDPA, no s x s scores kept) or eager (default fused)")
    g.add_argument("--no-sequence-parallel", action="store_true",
                   help="TP without sequence parallelism (norm inputs replicated)")
    g.add_argument("--no-vocab-parallel", action="store_true",
                   help="replicate the embedding and output head under TP")
    g.add_argument("--no-overlap-p2p", action="store_true",
                   help="pipeline transfers do not overlap compute (as DeepSpeed's engine)")
    g.add_argument("--no-overlap-grad-sync", action="store_true",
                   help="the gradient sync starts after the last backward")
    g.add_argument("--grad-reduce-dtype", choices=REDUCE_DTYPES, default="fp32",
                   help="dtype of the gradient reduction (default fp32)")
    g.add_argument("--no-recompute", action="store_true", help="forbid activation recompute")
    g.add_argument("--no-zero1", action="store_true", help="forbid ZeRO-1 optimizer sharding")


def job_from_args(args: argparse.Namespace) -> TrainingJob:
    return TrainingJob(
        global_batch=args.global_batch,
        seq_len=args.seq_len,
        precision=args.precision,
        allow_recompute=not args.no_recompute,
        allow_zero1=not args.no_zero1,
        attention=args.attention,
        sequence_parallel=not args.no_sequence_parallel,
        vocab_parallel=not args.no_vocab_parallel,
        overlap_p2p=not args.no_overlap_p2p,
        overlap_grad_sync=not args.no_overlap_grad_sync,
        grad_reduce_dtype=args.grad_reduce_dtype,
    )
