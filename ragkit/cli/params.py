"""Validated option types shared by every command: a bad number is refused by click, in one sentence,
before anything is read, planned or paid.

click's FloatRange lets nan through (every comparison with nan is false) and inf through an open end,
so a `--max-cost nan` would switch the cost guard off; these types refuse both.
"""
from __future__ import annotations

import math
import re

import click


class Number(click.FloatRange):
    """A finite float, optionally within [min, max] (click's FloatRange semantics otherwise)."""

    def __init__(self, min=None, max=None, *, min_open=False, max_open=False, name="number", example="1.5"):
        super().__init__(min, max, min_open=min_open, max_open=max_open)
        self.name, self.example = name, example

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give one like {self.example}.", param, ctx)
        return super().convert(number, param, ctx)


USD = Number(min=0, name="usd", example="0.50")                 # --max-cost: dollars, 0 or more
FRACTION = Number(0, 1, name="fraction", example="0.85")        # --floor, --input-share
SECONDS = Number(0, min_open=True, name="seconds", example="2.5")  # --timeout, --max-ttft: above 0
COUNT = click.IntRange(1)                                         # --concurrency, --samples, ...: 1 or more


class Label(click.ParamType):
    """A task label for the cost ledger (ragkit.ledger.check_task_label): one printable line, not empty."""

    name = "label"

    def convert(self, value, param, ctx):
        from ragkit.errors import InputError
        from ragkit.ledger import check_task_label

        try:
            return check_task_label(value)
        except InputError as exc:
            self.fail(str(exc), param, ctx)


class Sizes(click.ParamType):
    """'500,2k,1.5k,32K' -> (500, 2000, 1500, 32000): whole, positive sizes (tokens or documents)."""

    name = "sizes"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        out = []
        for part in filter(None, (p.strip() for p in str(value).split(","))):
            m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmM]?)", part)
            size = int(round(float(m.group(1)) * {"": 1, "k": 1000, "m": 1_000_000}[m.group(2).lower()])) if m else 0
            if size < 1:
                self.fail(f"{part!r} is not a size: use positive numbers like 500,2k,32k.", param, ctx)
            out.append(size)
        if not out:
            self.fail("give at least one size, like 500,2k,32k.", param, ctx)
        return tuple(out)


class Numbers(click.ParamType):
    """'0,25,50' -> (0.0, 25.0, 50.0): finite numbers within [low, high]."""

    name = "numbers"

    def __init__(self, low: float, high: float = math.inf, example: str = "0,25,50,75,100"):
        self.low, self.high, self.example = low, high, example

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        out = []
        for part in filter(None, (p.strip() for p in str(value).split(","))):
            try:
                number = float(part)
            except ValueError:
                number = math.nan
            if not (math.isfinite(number) and self.low <= number <= self.high):
                span = f"from {self.low:g} to {self.high:g}" if math.isfinite(self.high) else f"of {self.low:g} or more"
                self.fail(f"{part!r} is not a number {span}: use comma-separated numbers like {self.example}.",
                          param, ctx)
            out.append(number)
        if not out:
            self.fail(f"give at least one number, like {self.example}.", param, ctx)
        return tuple(out)


PERCENTS = Numbers(0, 100)                          # --depths: 0 = start, 100 = end
POSITIONS = Numbers(0, example="0,4,9,14,19")       # --positions: 0-based
