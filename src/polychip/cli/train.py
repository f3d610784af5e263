"""`polychip train PLAN.json`: run a plan on this machine (every rank, through torchrun's API),
or, with --plan-node (as in `polychip launch`'s commands), be one torchrun worker of a
cluster job. `--check` only says whether the runtime can execute the plan.

Before any process starts, a local run is refused when the runtime cannot execute the plan,
when the data is unusable, when this machine lacks the plan's device types, or when the
ranks do not fit this host (runtime.hostfit)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from rich.console import Console

from polychip.cli.runreport import print_train_summary

if TYPE_CHECKING:
    from polychip.plan import Plan
    from polychip.runtime.metrics import RunSummary
    from polychip.runtime.train import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a plan (pipelines, TP, heterogeneous data parallel)")
    p.add_argument("plan", help="plan JSON file (polychip plan)")
    p.add_argument("--check", action="store_true",
                   help="start nothing: check the plan against the runtime's capabilities "
                        "(and, without --emulate, this machine's device types); exit 0 when "
                        "the runtime can execute every feature it asks for, else 2 with the "
                        "reasons")
    add_train_options(p)
    p.add_argument("--elastic", action="store_true",
                   help="when a rank dies, plan again on the surviving chips (same global "
                        "batch), resume from the newest save in --checkpoint-dir, go on "
                        "(this host's ranks; needs --checkpoint-dir)")
    p.add_argument("--max-restarts", type=int, default=3, metavar="N",
                   help="with --elastic: re-plans after rank deaths allowed before the run "
                        "fails (default 3)")
    p.add_argument("--cluster-file", metavar="CLUSTER.yaml",
                   help="with --elastic: watch this cluster file; when it lists more chips, "
                        "the ranks save after their current step and the job is re-planned "
                        "on it")
    p.add_argument("--slow-threshold", type=float, default=1.25, metavar="X",
                   help="with --elastic: a chip whose compute stays at least X times its "
                        "estimate for --slow-window steps makes the job re-calibrate and "
                        "re-plan (default 1.25; 0: do not watch)")
    p.add_argument("--slow-window", type=int, default=5, metavar="N",
                   help="with --elastic: consecutive slow steps that make a chip slow "
                        "(default 5)")
    p.add_argument("--plan-node", type=int, metavar="N",
                   help="run as a torchrun worker of plan node N (set by `polychip launch`)")
    p.set_defaults(func=run)


def add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    p.add_argument("--emulate", action="store_true",
                   help="play the plan's chips on this CPU: every compute phase lasts its "
                        "cost-model time x a dilation (gloo for every island)")
    p.add_argument("--dilation", type=float, metavar="X",
                   help="with --emulate: the dilation factor (default: from a timed warm-up)")
    p.add_argument("--data", metavar="PATH",
                   help="token file (.npy from `polychip prepare-data`, or a uint16 .bin) or "
                        "text file (bytes, or --tokenizer's tokens); default: the Python "
                        "standard library's sources")
    p.add_argument("--metrics", metavar="OUT.jsonl", help="one JSON record per step per rank")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-3,
                   help="peak learning rate, reached after the warm-up (default 3e-3)")
    add_optimizer_options(p)
    p.add_argument("--dtype", choices=("float32", "float64", "bfloat16"), default=None,
                   help="run everything in this dtype (default: the plan's job.precision, "
                        "mixed precision with fp32 master weights for bf16/fp16)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="process-group timeout: a rank silent this long fails the run")
    p.add_argument("--init-from", metavar="HF_DIR",
                   help="initial weights from a Hugging Face model directory (config.json + "
                        "safetensors; Llama, Mistral, Qwen2) instead of the seeded init; its "
                        "config.json must describe the plan's model (the same path on every "
                        "node)")
    p.add_argument("--export-hf", metavar="DIR",
                   help="at the end, write the trained model as a Hugging Face directory "
                        "(config.json + model.safetensors; on rank 0's host)")
    c = p.add_argument_group("checkpoints (layout-free: resume under any plan of the model)")
    c.add_argument("--checkpoint-dir", metavar="DIR",
                   help="save parameters and optimizer state here, at the end, every "
                        "--save-every steps, and when stopped by Ctrl-C / SIGTERM")
    c.add_argument("--save-every", type=int, default=0, metavar="K",
                   help="save every K steps (default 0: only at the end or when stopped)")
    c.add_argument("--keep", type=int, default=0, metavar="N",
                   help="keep the N newest complete saves (default 0: all)")
    c.add_argument("--resume", action="store_true",
                   help="continue from the newest complete save in --checkpoint-dir (any "
                        "plan of the same model); --steps is the total, counted from step 0")


def add_optimizer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight-decay", type=float, default=0.1, metavar="WD",
                   help="AdamW weight decay, on matrices only: not on norms (default 0.1)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"),
                   default="constant",
                   help="after the warm-up: keep --lr, or decay it to --min-lr by "
                        "--lr-decay-steps (default constant)")
    p.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                   help="linear warm-up from lr/N to --lr over the first N steps (default 0)")
    p.add_argument("--min-lr", type=float, metavar="X",
                   help="the decay's floor (default: --lr / 10)")
    p.add_argument("--lr-decay-steps", type=int, metavar="N",
                   help="the step at which the decay reaches --min-lr (default: --steps)")
    p.add_argument("--clip-grad-norm", type=float, metavar="X",
                   help="clip the gradients to this global norm over all ranks (default: no "
                        "clipping; large-model recipes use 1.0)")
    p.add_argument("--tokenizer", metavar="TOKENIZER.json",
                   help="tokenize the --data text with this Hugging Face tokenizers file "
                        "(once, cached); its vocabulary must fit the model's vocab_size")


def train_config(args: argparse.Namespace, *, progress: bool) -> TrainConfig:
    from polychip.runtime.train import TrainConfig

    return TrainConfig(steps=args.steps, emulate=args.emulate, dilation=args.dilation,
                       data=args.data, seed=args.seed, lr=args.lr, dtype=args.dtype,
                       timeout_s=args.timeout, metrics_path=args.metrics, progress=progress,
                       init_from=args.init_from, export_hf=args.export_hf,
                       checkpoint_dir=args.checkpoint_dir, save_every=args.save_every,
                       keep=args.keep, resume=args.resume,
                       weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
                       warmup_steps=args.warmup_steps, min_lr=args.min_lr,
                       lr_decay_steps=args.lr_decay_steps, clip_grad_norm=args.clip_grad_norm,
                       tokenizer=args.tokenizer)


def check(plan_path: str, *, emulate: bool) -> int:
    """`--check`: the runtime's capability table and, unless emulated, this machine's
    device types; nothing starts. 0, or 2 with one line per reason."""
    from polychip.plan import load_plan
    from polychip.plan.capabilities import RUNTIME
    from polychip.runtime.executable import executable_problems
    from polychip.runtime.topology import device_problems, roles_of

    plan = load_plan(plan_path)
    problems = executable_problems(plan, RUNTIME)
    if not emulate:
        problems += device_problems(roles_of(plan, emulate=False))
    where = "emulated on this CPU" if emulate else "on this machine's devices"
    if problems:
        print(f"polychip train --check: the runtime cannot execute {plan_path} ({where}):",
              file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    Console().print(f"polychip train --check: the runtime can execute every feature "
                    f"{plan_path} asks for ({where}); host capacity is checked when "
                    f"`polychip train` starts")
    return 0


def check_hf_paths(plan: Plan, config: TrainConfig) -> None:
    """--init-from: a directory of the plan's model (config.json, tensor names and shapes);
    --export-hf: a directory that holds no model yet. Headers only; before any process."""
    from polychip.runtime.hf_export import check_export_dir
    from polychip.runtime.hf_weights import check_hf_weights

    if config.init_from:
        check_hf_weights(plan.model, config.init_from)
    if config.export_hf:
        check_export_dir(config.export_hf)


def run(args: argparse.Namespace) -> int:
    if args.check:
        return check(args.plan, emulate=args.emulate)
    from polychip.plan import load_plan
    from polychip.runtime.data import SampleStream, open_source
    from polychip.runtime.errors import DistributedRunError, RuntimeSetupError
    from polychip.runtime.hostfit import check_host_fit
    from polychip.runtime.launch import TrainingStopped, launch_local, torchrun_worker
    from polychip.runtime.session import TrainTask
    from polychip.runtime.topology import check_devices, rank_roles

    plan = load_plan(args.plan)
    config = train_config(args, progress=True)
    if args.cluster_file and not args.elastic:
        raise RuntimeSetupError("--cluster-file is watched by --elastic; add --elastic")
    if args.elastic and (args.plan_node is not None or not config.checkpoint_dir):
        raise RuntimeSetupError(
            "--elastic runs this host's ranks under a supervisor and needs --checkpoint-dir "
            "DIR; multi-node elastic jobs (--plan-node) are not supported yet")
    roles = rank_roles(plan, emulate=config.emulate)  # refuses what cannot run yet
    # Bad data, or a checkpoint that cannot be resumed, fails here, before any process starts
    # (text is tokenized here, cached).
    SampleStream(open_source(config.data, plan.model.vocab_size, tokenizer=config.tokenizer),
                 plan.job.seq_len)
    check_hf_paths(plan, config)  # and Hugging Face weights of another model
    console = Console()
    if config.resume:
        say_resume(console, plan, config)
    try:
        if args.plan_node is not None:
            rank, summary = torchrun_worker(plan, args.plan_node, TrainTask(config))
        else:
            check_devices(roles)
            check_host_fit(plan, roles, config)
            if args.elastic:
                plan, summary = run_elastic_cli(plan, config, args, console)
                rank = 0
            else:
                rank, summary = 0, launch_local(plan, TrainTask(config))[0]
    except TrainingStopped as exc:
        how = "at once (a second signal)" if exc.at_once else "at a step boundary"
        console.print(f"polychip train: {exc.signal_name} stopped the run {how}; "
                      f"{saved_line(config)}")
        return 128 + exc.signum
    except DistributedRunError as exc:
        console.print(f"[red]polychip train: the run failed[/red]: {exc}")
        if config.metrics_path:
            console.print(f"the steps each rank finished: {config.metrics_path}.rank<N> (on "
                          "that rank's host, one JSON line per step)")
        return 1
    if rank == 0:
        print_train_summary(console, plan, summary, plan_path=args.plan,
                            metrics_path=config.metrics_path)
        if config.metrics_path:
            console.print(f"metrics: {config.metrics_path}")
        if config.export_hf:
            console.print(f"the trained model, in Hugging Face form: {config.export_hf}")
    return 0


def say_resume(console: Console, plan: Plan, config: TrainConfig) -> None:
    """Before any process starts: what ``--resume`` will continue from; a save of another
    model, only incomplete saves, or one already at ``--steps``: exit 2."""
    from polychip.runtime.checkpoint_manifest import resumable
    from polychip.runtime.errors import RuntimeSetupError

    assert config.checkpoint_dir is not None
    manifest = resumable(config.checkpoint_dir, plan.model, config.seed)
    if manifest is None:
        console.print(f"--resume: no save in {config.checkpoint_dir} yet; starting at step 0")
        return
    if manifest.step >= config.steps:
        raise RuntimeSetupError(
            f"{config.checkpoint_dir}: the newest save is at step {manifest.step}, --steps is "
            f"{config.steps} (the run's total); raise --steps to train on")
    console.print(f"--resume: continuing from step {manifest.step} (of {config.steps}), "
                  f"saved in {config.checkpoint_dir}")


def saved_line(config: TrainConfig) -> str:
    """What a stopped run leaves behind, in one line."""
    if not config.checkpoint_dir:
        return "nothing saved (no --checkpoint-dir): its progress is lost"
    from polychip.runtime.checkpoint_manifest import latest_complete, read_manifest
    from polychip.runtime.errors import RuntimeSetupError

    try:
        folder = latest_complete(config.checkpoint_dir)
    except RuntimeSetupError:
        folder = None
    if folder is None:
        return f"no complete save in {config.checkpoint_dir}"
    return (f"saved step {read_manifest(folder).step} in {folder}; continue with the same "
            f"command and --resume")


def run_elastic_cli(plan: Plan, config: TrainConfig, args: argparse.Namespace,
                    console: Console) -> tuple[Plan, RunSummary | None]:
    """--elastic: the supervisor's run; the plan that finished and its summary."""
    from polychip.elastic.supervisor import run_elastic

    done = run_elastic(plan, config, max_restarts=args.max_restarts, say=console.print,
                       cluster_file=args.cluster_file,
                       slow_threshold=args.slow_threshold or None, slow_window=args.slow_window)
    if done.replans:
        console.print(f"elastic: finished on a plan of {done.plan.world_size} rank(s) after "
                      f"{len(done.replans)} re-plan(s) (log: "
                      f"{config.checkpoint_dir}/elastic.jsonl)")
    return done.plan, done.summary
