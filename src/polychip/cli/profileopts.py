"""`--profile FILE` (repeatable) for the commands that price a plan: `plan`, `simulate`,
`estimate` (docs/profile-format.md)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from polychip.costmodel import ProfileSet
from polychip.spec.cluster import Cluster
from polychip.spec.job import TrainingJob
from polychip.spec.model import ModelSpec
from polychip.spec.profile_file import load_profiles


def add_profile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile", action="append", default=[], metavar="FILE",
        help="a measured profile (`polychip profile --out`), one per chip type; repeat for "
        "several: its figures replace the analytic ones where it has points",
    )


def profile_set(args: argparse.Namespace, cluster: Cluster, model: ModelSpec,
                job: TrainingJob) -> ProfileSet | None:
    """The `--profile` files checked against the job, or None without any."""
    if not args.profile:
        return None
    profiles = load_profiles(args.profile)
    for p in profiles:
        factors = {k: v for k, v in asdict(p.corrections).items() if v != 1.0}
        if factors:
            print(f"polychip: note: {p.file}: the estimate's phases on {p.chip} are corrected: "
                  + ", ".join(f"{k} x{v:.3g}" for k, v in factors.items())
                  + " (corrections, e.g. from `polychip calibrate`)", file=sys.stderr)
    return ProfileSet.for_job(profiles, cluster, model, job)
