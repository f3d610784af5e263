"""The record of each re-plan: why, when, the plans before and after (their estimates), the
step resumed from -- one line on the console, one JSON line in ``elastic.jsonl`` beside the
checkpoints."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polychip.elastic.slowchip import SlowReplan

EVENTS = "elastic.jsonl"


@dataclass(frozen=True)
class Replan:
    """One re-plan. ``died_*``: set when a rank died; None for chips that joined."""

    attempt: int
    reason: str  # what happened, in words
    detected_at: float  # Unix time the supervisor learned of it
    resumed_step: int  # the checkpoint's step the new plan starts from
    old_world: int  # ranks of the plan that ran
    chips: int  # chips in the cluster the new plan was searched on
    new_world: int  # ranks of the new plan (the planner may leave some chips out)
    old_tokens_per_s: float  # the cost model's estimates
    new_tokens_per_s: float
    replan_s: float  # seconds the planner took
    died_rank: int | None = None
    died_chip: str | None = None
    died_node: int | None = None
    exitcode: int | None = None

    def line(self) -> str:
        change = self.new_tokens_per_s / self.old_tokens_per_s - 1
        return (f"elastic: {self.reason}; re-planned on the {self.chips} chips in "
                f"{self.replan_s:.1f} s (the new plan uses {self.new_world}); estimate "
                f"{self.old_tokens_per_s:,.0f} -> {self.new_tokens_per_s:,.0f} tokens/s "
                f"({change:+.0%}); resuming from step {self.resumed_step}")


def log_event(root: str | Path, event: Replan | SlowReplan) -> None:
    path = Path(root) / EVENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(dataclasses.asdict(event)) + "\n")
