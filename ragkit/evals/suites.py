"""Eval suites: TOML files in ./evals/ or shipped in ragkit/data/suites/, runnable by name.

    name = "lost-in-the-middle"
    samples = 3                          # defaults for every run below
    strategies = ["stuff", "retrieve"]
    [[runs]]
    name = "needle"                      # the run's folder under the suite's output folder
    task = "needle"                      # needle | qa | kv
    lengths = [2000, 8000, 32000]        # tokens (qa without by_tokens: documents)
    depths = [0, 25, 50, 75, 100]        # percent (qa without by_tokens: 0-based gold positions)
    [runs.options]                       # task options (corpus, distractors, n_needles, ...)
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ragkit.errors import InputError
from ragkit.config import bundled

RUN_KEYS = {"name", "task", "lengths", "depths", "samples", "strategies", "max_tokens", "temperature",
            "retrieve_budget_tokens", "order", "stuff_order", "options"}


@dataclass(frozen=True)
class SuiteRun:
    name: str
    task: str
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    samples: int
    strategies: tuple[str, ...]
    max_tokens: int
    temperature: float
    retrieve_budget_tokens: int | None
    order: str
    options: dict
    stuff_order: str = "document"   # "edges": stuffed documents ordered as `ragkit ask` orders them

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def describe(self, samples: int | None = None) -> str:
        """One readable line: `needle (needle): 2K, 8K tokens; depths 0%, 50%; 3 samples; stuff, retrieve`."""
        from ragkit.evals.records import plural
        from ragkit.evals.report import _fmt_depth, _fmt_len
        from ragkit.evals.tasks import axis_units

        length_unit, depth_unit = axis_units(self.task, self.options)
        lengths = ", ".join(_fmt_len(L, "tokens") for L in self.lengths)  # the unit once, after the list
        depths = ", ".join(_fmt_depth(D, depth_unit).removeprefix("pos ") for D in self.depths)
        parts = [f"{lengths} {'documents' if length_unit == 'docs' else 'tokens'}",
                 f"{'gold positions' if depth_unit == 'position' else 'depths'} {depths}",
                 plural(samples or self.samples, "sample"), ", ".join(self.strategies)]
        if self.stuff_order != "document":
            parts.append(f"stuffed in {self.stuff_order} order")
        parts += [f"{key} {str(value).lower() if isinstance(value, bool) else value}"
                  for key, value in self.options.items()]
        return f"{self.name} ({self.task}): " + "; ".join(parts)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: str
    runs: tuple[SuiteRun, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "path": self.path,
                "runs": [r.to_dict() for r in self.runs]}


def suite_dirs() -> list[Path]:
    return [Path.cwd() / "evals", bundled("suites")]  # the project's own suites first, then ragkit's


def find_suite(name_or_file: str) -> Path:
    path = Path(name_or_file)
    if path.suffix == ".toml" and path.is_file():
        return path
    for folder in suite_dirs():
        candidate = folder / f"{name_or_file}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for folder in suite_dirs() if folder.is_dir() for p in folder.glob("*.toml")})
    raise InputError(f"no eval suite {name_or_file!r}: give a .toml file or one of: {', '.join(known) or '(none)'}")


def load_suite(name_or_file: str) -> Suite:
    path = find_suite(name_or_file)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML ({exc})") from None
    defaults = {k: v for k, v in data.items() if k in RUN_KEYS}
    runs = []
    for i, raw in enumerate(data.get("runs", [])):
        unknown = set(raw) - RUN_KEYS
        if unknown:
            raise InputError(f"{path}: run {i + 1} has unknown keys {sorted(unknown)}; allowed: {sorted(RUN_KEYS)}")
        r = {**defaults, **raw}
        if "task" not in r or "lengths" not in r or "depths" not in r:
            raise InputError(f"{path}: run {i + 1} needs task, lengths and depths")
        runs.append(SuiteRun(
            name=str(r.get("name", f"{r['task']}-{i + 1}")), task=r["task"],
            lengths=tuple(int(x) for x in r["lengths"]), depths=tuple(float(x) for x in r["depths"]),
            samples=int(r.get("samples", 3)), strategies=tuple(r.get("strategies", ["stuff"])),
            max_tokens=int(r.get("max_tokens", 64)), temperature=float(r.get("temperature", 0.0)),
            retrieve_budget_tokens=r.get("retrieve_budget_tokens"), order=str(r.get("order", "edges")),
            options=dict(r.get("options", {})), stuff_order=str(r.get("stuff_order", "document"))))
    if not runs:
        raise InputError(f"{path} has no [[runs]]")
    return Suite(str(data.get("name", path.stem)), str(data.get("description", "")), str(path), tuple(runs))
