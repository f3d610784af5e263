"""`polychip launch PLAN.json --nodes h0,h1,...`: the exact torchrun command of every node of a
multi-node job (one host per plan node), printed, or run with --exec."""

from __future__ import annotations

import argparse

from rich.console import Console

from polychip.cli.train import add_train_options

# Options of `polychip train` forwarded to every worker, with their defaults.
_FORWARDED = ("steps", "emulate", "dilation", "data", "metrics", "seed", "lr", "dtype",
              "timeout", "init_from", "export_hf", "weight_decay", "lr_schedule",
              "warmup_steps", "min_lr", "lr_decay_steps", "clip_grad_norm", "tokenizer",
              "checkpoint_dir", "save_every", "keep", "resume")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="print (or run) the per-node torchrun commands of a plan")
    p.add_argument("plan", help="plan JSON file; the same path must exist on every node")
    p.add_argument("--nodes", required=True, metavar="HOST,HOST,...",
                   help="one host per cluster node (or per node the plan uses), in order; "
                        "the first hosts the rendezvous")
    p.add_argument("--port", type=int, default=29500, help="rendezvous port (default 29500)")
    p.add_argument("--exec", action="store_true",
                   help="run the commands: this host's directly, the others' over ssh")
    add_train_options(p)
    p.set_defaults(func=run)


def train_args(args: argparse.Namespace, parser_defaults: dict[str, object]) -> list[str]:
    """The `polychip train` options that differ from their defaults, as arguments."""
    out: list[str] = []
    for name in _FORWARDED:
        value = getattr(args, name)
        if value == parser_defaults.get(name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out += [flag] if value else []
        else:
            out += [flag, str(value)]
    return out


def run(args: argparse.Namespace) -> int:
    from polychip.plan import load_plan
    from polychip.runtime.launch import exec_commands, torchrun_commands
    from polychip.runtime.topology import rank_roles

    plan = load_plan(args.plan)
    rank_roles(plan, emulate=args.emulate)  # refuses what cannot run yet
    probe = argparse.ArgumentParser(add_help=False)
    add_train_options(probe)
    defaults = vars(probe.parse_args([]))
    hosts = [h.strip() for h in args.nodes.split(",") if h.strip()]
    commands = torchrun_commands(plan, args.plan, hosts, port=args.port,
                                 train_args=train_args(args, defaults))
    console = Console(soft_wrap=True)
    for cmd in commands:
        ranks = ", ".join(f"{i}->{r}" for i, r in enumerate(cmd.plan_ranks))
        console.print(f"# {cmd.host}: plan node {cmd.plan_node}, local rank -> plan rank: "
                      f"{ranks}", markup=False, highlight=False)
        console.print(cmd.line, markup=False, highlight=False)
    if args.exec:
        return exec_commands(commands)
    return 0
