"""Board power and prices of a chip: catalog figures with source and date, or unknown.

The catalog (data/accelerators.yaml) gives each chip `board_power_w`, `price_usd` (a list
price) and `rent_usd_per_hour` (a rental range `[low, high]`), each as
`{value | low+high, source, date}`, value null where no trustworthy published figure exists.
A cluster file may give them per chip (`chips:`) or per node group (`nodes[i]`), as plain
numbers; the node group's figure wins. Unknown stays `None`, never a guess: whatever needs
the figure (energy, cost, `--objective cost`, `whatif`) says which key to set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

MONEY_KEYS = ("board_power_w", "price_usd", "rent_usd_per_hour")
EXAMPLES = {"board_power_w": "700", "price_usd": "20000", "rent_usd_per_hour": "[2.0, 3.5]"}
UNITS = {"board_power_w": "watts", "price_usd": "US dollars", "rent_usd_per_hour": "US$ per hour"}


@dataclass(frozen=True)
class Economics:
    """Per chip: board power W, list price $, rental $/h as (low, high); None: unknown."""

    board_power_w: float | None = None
    price_usd: float | None = None
    rent_usd_per_hour: tuple[float, float] | None = None
    # key -> "source (date)" for the figures that have one
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def rent_per_hour(self) -> float | None:
        """The rental figure costs use: the midpoint of the range."""
        rent = self.rent_usd_per_hour
        return None if rent is None else (rent[0] + rent[1]) / 2

    def override(self, values: Mapping[str, Any], where: str) -> Economics:
        """These figures with `values` (plain numbers, None: keep) taking precedence."""
        out = {k: getattr(self, k) for k in MONEY_KEYS}
        sources = dict(self.sources)
        for key in MONEY_KEYS:
            if values.get(key) is not None:
                out[key] = _plain(key, values[key])
                sources[key] = f"declared in the cluster file ({where})"
        return Economics(**out, sources=sources)


def _rent(value: Any) -> tuple[float, float]:
    if isinstance(value, list | tuple):
        low, high = (float(v) for v in value)
        return (low, high)
    return (float(value), float(value))


def _plain(key: str, value: Any) -> float | tuple[float, float]:
    return _rent(value) if key == "rent_usd_per_hour" else float(value)


def economics_from_entry(entry: Mapping[str, Any]) -> Economics:
    """Economics of a catalog entry (figures as `{value | low, high, source, date}`) or of a
    declaration (plain numbers; a rent may be `[low, high]`)."""
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in MONEY_KEYS:
        raw = entry.get(key)
        if isinstance(raw, Mapping):
            value = [raw["low"], raw["high"]] if "low" in raw else raw.get("value")
            sources[key] = f"{raw.get('source', '')} ({raw.get('date', 'undated')})"
        else:
            value = raw
            if raw is not None:
                sources[key] = "declared in the cluster file"
        out[key] = None if value is None else _plain(key, value)
    return Economics(**out, sources=sources)


def economics_to_dict(econ: Economics) -> dict[str, Any]:
    """The known figures as a cluster file declares them (plain numbers, rent [low, high])."""
    out: dict[str, Any] = {}
    if econ.board_power_w is not None:
        out["board_power_w"] = econ.board_power_w
    if econ.price_usd is not None:
        out["price_usd"] = econ.price_usd
    if econ.rent_usd_per_hour is not None:
        out["rent_usd_per_hour"] = list(econ.rent_usd_per_hour)
    return out


def _check(key: str, value: Any) -> Any:
    fix = (
        f"give {UNITS[key]} as a number >= 0"
        + (", or a range [low, high]" if key == "rent_usd_per_hour" else "")
        + f", e.g. {key}: {EXAMPLES[key]}"
        + "; leave it out where unknown"
    )
    values = value if isinstance(value, list | tuple) else [value]
    if key == "rent_usd_per_hour" and isinstance(value, list | tuple) and len(value) != 2:
        raise ValueError(f"a rent range has two figures [low, high]; {fix}")
    if not isinstance(value, list | tuple) or key == "rent_usd_per_hour":
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
                raise ValueError(f"{v!r} is not a non-negative number; {fix}")
            if v == float("inf"):
                raise ValueError(f"{v!r} is not finite; {fix}")
        if len(values) == 2 and values[0] > values[1]:
            raise ValueError(f"low {values[0]} > high {values[1]}; {fix}")
        return value
    raise ValueError(f"{value!r} is not a number; {fix}")


class MoneyDecl(BaseModel):
    """The money and power keys a cluster file may give a chip or a node group."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    board_power_w: float | None = None
    price_usd: float | None = None
    rent_usd_per_hour: float | list[float] | None = None

    @field_validator(*MONEY_KEYS, mode="before")
    @classmethod
    def _non_negative(cls, value: Any, info: Any) -> Any:
        return None if value is None else _check(info.field_name, value)
