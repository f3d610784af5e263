"""`polychip profile --model M [--device cuda] [--chip NAME] --out FILE`: measure this
machine's chip with the runtime's own blocks and write a profile (docs/profile-format.md)
that `plan`, `simulate` and `estimate --profile` read."""

from __future__ import annotations

import argparse
import sys

from polychip.spec.errors import PolychipError
from polychip.spec.job import PRECISIONS

GPU_GRID = {"micro_batches": "1,2,4,8", "seq_lens": "2048", "sizes": "4K,64K,1M,16M,256M"}
CPU_GRID = {"micro_batches": "1,2,4,8", "seq_lens": "256", "sizes": "4K,64K,1M,16M"}
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile", help="measure this machine's chip (blocks, links) and write a profile",
        description="Time one transformer block, the embedding, the head + loss and an "
        "optimizer step with the runtime's own code, the node's collectives, point-to-point "
        "and device <-> host copies; write a profile for `--profile` (docs/profile-format.md).",
    )
    p.add_argument("--model", required=True, help="preset (tiny, llama3-8b, ...) or HF config.json")
    p.add_argument("--device", default="cpu",
                   help="torch device type: cuda, npu, xpu, mlu, cpu (default cpu)")
    p.add_argument("--chip", help="chip type the profile is for, as the catalog or the cluster "
                   "file names it (default: from the device's name; 'cpu' on the CPU)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="precision of the job (default fp32 on the CPU, bf16 elsewhere)")
    p.add_argument("--tp", help="TP degrees of the shard shapes (default 1,2,4,8 where they "
                   "divide the heads; 1,2 on the CPU)")
    p.add_argument("--micro-batches", help="micro-batch sizes (default 1,2,4,8)")
    p.add_argument("--seq-lens", help="sequence lengths (default 2048; 256 on the CPU)")
    p.add_argument("--sizes", help="message sizes of the links, e.g. 4K,1M,256M")
    p.add_argument("--collective-ranks", type=int,
                   help="devices the collectives run on (default every device of the type; "
                   "2 gloo processes on the CPU; 0: none)")
    p.add_argument("--backend", help="collective backend (default: the device's: nccl, hccl, "
                   "cncl, xccl; gloo on the CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs; the median (default 5)")
    p.add_argument("--quick", action="store_true", help="a tiny grid (seconds on a CPU)")
    p.add_argument("--busy-neighbours", type=int, default=0, metavar="N",
                   help="CPU only: keep N other cores running the same block while timing, as "
                        "the other ranks of a run on this host do (a CPU chip computes slower "
                        "beside them; default 0)")
    p.add_argument("--out", help="profile file to write (default profile-CHIP.json)")
    p.set_defaults(func=run)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v[:-1]) * UNITS[v[-1].upper()] if v[-1].upper() in UNITS else int(v)
                       for v in text.split(",") if v.strip())
    except ValueError:
        raise PolychipError(f"{flag} {text!r}: give comma-separated whole numbers, e.g. "
                            f"1,2,4 (sizes may end in K, M or G)") from None
    if not values or min(values) < 1:
        raise PolychipError(f"{flag} {text!r}: every value must be >= 1")
    return values


def _request(args: argparse.Namespace):
    from polychip.runtime.profile_comm import DEFAULT_BACKENDS
    from polychip.runtime.profile_run import (
        ProfileRequest,
        Timing,
        check_device,
        default_chip,
        device_count,
        quick_request,
        valid_tps,
    )
    from polychip.spec.model import load_model

    model, cpu = load_model(args.model), args.device == "cpu"
    check_device(args.device)
    if args.warmup < 0 or args.repeats < 1:
        raise PolychipError(f"--warmup {args.warmup} / --repeats {args.repeats}: need >= 0 "
                            f"untimed and >= 1 timed runs")
    grid = CPU_GRID if cpu else GPU_GRID
    tps = _ints(args.tp, "--tp") if args.tp else valid_tps(model, (1, 2) if cpu else (1, 2, 4, 8))
    ranks = args.collective_ranks
    if ranks is None:
        ranks = 2 if cpu else device_count(args.device)
    req = ProfileRequest(
        model=model, device_type=args.device, chip=args.chip or default_chip(args.device),
        precision=args.precision or ("fp32" if cpu else "bf16"), tps=tps,
        micro_batches=_ints(args.micro_batches or grid["micro_batches"], "--micro-batches"),
        seq_lens=_ints(args.seq_lens or grid["seq_lens"], "--seq-lens"),
        message_bytes=_ints(args.sizes or grid["sizes"], "--sizes"), collective_ranks=ranks,
        backend=args.backend or DEFAULT_BACKENDS.get(args.device, "gloo"),
        timing=Timing(args.warmup, args.repeats), busy_neighbours=args.busy_neighbours)
    if args.busy_neighbours < 0:
        raise PolychipError(f"--busy-neighbours {args.busy_neighbours}: give 0 or more cores")
    return quick_request(req) if args.quick else req


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from polychip.cli.profile_view import render_profile
    from polychip.runtime.profile_run import check_request, num_measurements, profile_chip
    from polychip.spec.accelerators import resolve_name
    from polychip.spec.profile_file import save_profile

    req = _request(args)
    check_request(req)
    out = args.out or f"profile-{req.chip}.json"
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   console=Console(file=sys.stderr), transient=True)
    with bar:
        task = bar.add_task(f"profiling {req.chip}", total=num_measurements(req))

        def tick(what: str) -> None:
            bar.update(task, advance=1, description=what[:60])

        profile = profile_chip(req, tick)
    save_profile(profile, out)
    console = Console()
    render_profile(console, profile, out)
    if resolve_name(profile.chip) is None:
        console.print(f"note: {profile.chip!r} is no catalog chip: `--profile` applies it to a "
                      f"cluster that declares a chip of that name (or re-run with --chip NAME)")
    return 0
