"""`--profile FILE` (repeatable) for the commands that price a plan: `plan`, `simulate`,
`estimate` (docs/profile-format.md)."""

from __future__ import annotations

import argparse
import sys

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
        if p.corrections.grad_sync != 1.0:
            print(f"polychip: note: {p.file}: corrections.grad_sync {p.corrections.grad_sync:g} "
                  f"is not applied yet (the gradient sync takes no per-chip factor)",
                  file=sys.stderr)
    return ProfileSet.for_job(profiles, cluster, model, job)
