"""Cost math: what N input and M output tokens cost on a model, per query, per day and per month."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ragkit.errors import InputError

DAYS_PER_MONTH = 30


def usd(x: float | None) -> str:
    """Dollars as every ragkit message prints them: cents from $1, else enough digits that a small
    amount is not shown as nothing ($0.0001, $0.0042, $0.50); None -> "-"."""
    if x is None:
        return "-"
    if abs(x) >= 1:
        return f"${x:,.2f}"
    text = f"{x:.6f}".rstrip("0")
    return "$" + (text if len(text.split(".")[1]) >= 2 else f"{x:.2f}")


def check_max_cost(max_cost_usd: float | None) -> float | None:
    """A cost cap as given to the library (Session.ask, run_compare, run_grid): a finite number of
    dollars, 0 or more, or None for no cap. nan would compare false against every cost and pay."""
    if max_cost_usd is None:
        return None
    if isinstance(max_cost_usd, bool) or not isinstance(max_cost_usd, (int, float)) \
            or not math.isfinite(max_cost_usd) or max_cost_usd < 0:
        raise InputError(f"max_cost_usd must be a finite number of dollars, 0 or more (or None for no cap), "
                         f"not {max_cost_usd!r}.")
    return float(max_cost_usd)


def cost_usd(model, input_tokens: int, output_tokens: int) -> float:
    """Price of one call: tokens times the registry's USD per million tokens."""
    from ragkit.models import get_model

    spec = get_model(model)
    return (input_tokens * spec.input_usd_per_mtok + output_tokens * spec.output_usd_per_mtok) / 1_000_000


@dataclass(frozen=True)
class VolumeCost:
    model: str
    tokens_per_day: int
    input_share: float
    input_tokens_per_day: int
    output_tokens_per_day: int
    cost_per_day_usd: float
    cost_per_month_usd: float

    def to_dict(self) -> dict:
        return asdict(self)


def volume_cost(model, tokens_per_day: int, input_share: float = 0.75) -> VolumeCost:
    """Daily and monthly (30-day) cost of a token volume split between input and output.

    GPT-4o at 10M tokens/day, 75% input: 7.5M x $2.50 + 2.5M x $10.00 per 1M = $43.75/day.
    """
    from ragkit.models import get_model

    if tokens_per_day < 0:
        raise InputError("tokens per day cannot be negative.")
    if not 0.0 <= input_share <= 1.0:
        raise InputError(f"input share must be between 0 and 1 (got {input_share}); 0.75 means 75% input tokens.")
    spec = get_model(model)
    input_tokens = round(tokens_per_day * input_share)
    output_tokens = tokens_per_day - input_tokens
    per_day = cost_usd(spec, input_tokens, output_tokens)
    return VolumeCost(spec.id, tokens_per_day, input_share, input_tokens, output_tokens,
                      per_day, per_day * DAYS_PER_MONTH)


def task_cost(model, tasks_per_day: int, calls) -> VolumeCost:
    """Daily and monthly cost of a number of tasks at measured tokens per task: `calls` are recorded
    calls (ledger rows) whose mean input and output tokens make one task."""
    from ragkit.models import get_model

    calls = list(calls)
    if tasks_per_day < 0:
        raise InputError("tasks per day cannot be negative.")
    if not calls:
        raise InputError("no recorded calls to measure tokens per task; use --tokens-per-day, "
                         "or run some questions first (ragkit ask / ragkit compare).")
    spec = get_model(model)
    input_tokens = round(tasks_per_day * sum(c.input_tokens for c in calls) / len(calls))
    output_tokens = round(tasks_per_day * sum(c.output_tokens for c in calls) / len(calls))
    total = input_tokens + output_tokens
    per_day = cost_usd(spec, input_tokens, output_tokens)
    return VolumeCost(spec.id, total, input_tokens / total if total else 0.0, input_tokens, output_tokens,
                      per_day, per_day * DAYS_PER_MONTH)
