"""`polychip whatif CLUSTER.yaml --model M --add CHIP:COUNT ...`: plan the cluster with each
addition and rank the additions by tokens/s gained per US$ (docs/planner.md, "What if")."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polychip.cli.jobopts import add_run_options, job_from_args
from polychip.cli.plan import DEFAULT_GLOBAL_BATCH, DEFAULT_SEQ_LEN


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "whatif",
        help="rank chips to add to a cluster by tokens/s gained per US$",
        description="Plan CLUSTER.yaml as it is and with each --add (a new node group of that "
        "chip), then rank the additions by tokens/s gained per unit of money: rent per hour "
        "(default) or list price (--pay buy), from the catalog or the cluster file.",
    )
    p.add_argument("cluster", help="cluster YAML file (see examples/clusters/)")
    p.add_argument("--model", required=True, help="preset (llama3-70b, tiny, ...) or HF config")
    p.add_argument("--global-batch", type=int, default=DEFAULT_GLOBAL_BATCH,
                   help=f"sequences per optimizer step (default {DEFAULT_GLOBAL_BATCH})")
    p.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN,
                   help=f"tokens per sequence (default {DEFAULT_SEQ_LEN})")
    p.add_argument("--add", action="append", required=True, metavar="CHIP:COUNT",
                   help="an addition to try (repeatable), e.g. --add ascend-910b:64 --add h20:64")
    p.add_argument("--budget", type=float, default=None,
                   help="most money per addition: US$/h of rent, or US$ with --pay buy")
    p.add_argument("--pay", choices=("rent", "buy"), default="rent",
                   help="price additions by rent_usd_per_hour (default) or price_usd")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the options as JSON")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml
    from rich.console import Console
    from rich.table import Table

    from polychip.planner.whatif import what_if
    from polychip.spec.cluster import load_cluster
    from polychip.spec.model import load_model

    load_cluster(args.cluster)  # the file's own errors first, with its name
    data = yaml.safe_load(Path(args.cluster).read_text(encoding="utf-8"))
    base, options = what_if(
        data, load_model(args.model), job_from_args(args), args.add,
        budget=args.budget, pay=args.pay, file=args.cluster,
    )  # fmt: skip
    assert base.estimate is not None
    unit = "US$/h" if args.pay == "rent" else "US$"
    console = Console()
    console.print(f"{args.cluster} as it is: {base.estimate.tokens_per_s:,.0f} tokens/s")
    table = Table(title=f"additions by tokens/s gained per {unit} ({args.pay})")
    for col in ("add", "tokens/s", "gain tokens/s", f"added {unit}", f"gain per {unit}"):
        table.add_column(col, justify="left" if col == "add" else "right")
    for o in options:
        table.add_row(o.add, f"{o.tokens_per_s:,.0f}", f"{o.gain_tokens_per_s:+,.0f}",
                      f"{o.added_cost:,.2f}",
                      "free" if o.gain_per_cost is None else f"{o.gain_per_cost:,.1f}")
    console.print(table)
    if args.json_out:
        out = {"cluster": args.cluster, "pay": args.pay, "unit": unit, "budget": args.budget,
               "tokens_per_s": base.estimate.tokens_per_s,
               "options": [o.to_dict() for o in options]}
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")
        console.print(f"options written to {args.json_out}")
    return 0
