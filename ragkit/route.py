"""Model routing: which model answers this question on this corpus, and which ones stand behind it.

    policy (the article's selection matrix, or [router] in ragkit.toml / your user config)
      -> candidates allowed for the task
      -> drop those measured under the quality floor (`ragkit compare --save`); unmeasured ones are
         kept on the policy's word alone, and said to be unmeasured
      -> drop those over the latency bound (registry TTFT)
      -> drop those that cannot be called here (no API key in the environment; a local model needs none)
      -> plan each remaining one on this corpus (Session.plan: stuff or retrieve, cost per query)
      -> drop those the daily budget cannot pay -> cheapest first; the rest are its fallbacks

At call time (`Session(model="auto").ask`) the next candidate answers when the one before fails after
its retries (429, 5xx, timeouts, broken connections) or the prompt is over its context length; it
decides on the error's `kind` (ragkit.errors.ProviderError), never on its wording.

`select_model` is the article's router, reproduced exactly (it returns the article's API model names).
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ragkit.costs import usd
from ragkit.errors import ConfigError, InputError, MissingKey, ProviderError

AUTO = "auto"
DEFAULT_TASK = "qa"


def select_model(task_type: str, quality_floor: float, daily_volume: int) -> str:
    """The article's model router for a mixed pipeline, as published."""
    if task_type == "structured_extraction":
        return "gpt-4o-2024-11-20"  # schema enforcement, no parse errors

    if task_type == "batch_enrichment" and quality_floor < 0.85:
        if daily_volume > 2000:
            return "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"  # Together AI

    if task_type in ("classification", "routing", "summarization"):
        if daily_volume > 5000:
            return "gemini-2.0-flash"  # cost + speed
        return "gpt-4o-mini"

    # Default: Claude for agent tasks and complex reasoning
    return "claude-3-5-sonnet-20241022"


# The article's selection matrix (task type -> first choice, fallback), in registry ids. "qa" (ragkit's
# document Q&A) is its "long-context document analysis" row.
ARTICLE_MATRIX: dict[str, tuple[str, ...]] = {
    "interactive_agent": ("claude-3.5-sonnet", "gpt-4o"),
    "structured_extraction": ("gpt-4o", "claude-3.5-sonnet"),
    "batch_processing": ("llama-3.1-70b", "gemini-2.0-flash"),
    "classification": ("gemini-2.0-flash", "gpt-4o-mini"),
    "routing": ("gemini-2.0-flash", "gpt-4o-mini"),
    "long_context_analysis": ("claude-3.5-sonnet", "gemini-1.5-pro"),
    "qa": ("claude-3.5-sonnet", "gemini-1.5-pro"),
    "code_generation": ("claude-3.5-sonnet", "gpt-4o"),
    "realtime_chat": ("gemini-2.0-flash", "claude-3.5-haiku"),
}


@dataclass(frozen=True)
class Policy:
    tasks: dict[str, tuple[str, ...]]     # task -> candidates, first choice first
    floor: float | None = None            # minimum measured accuracy
    max_ttft_s: float | None = None       # latency bound (time to first token)
    daily_usd: float | None = None        # [budget] daily_usd
    source: str = "the article's selection matrix"

    def candidates(self, task: str) -> tuple[str, ...]:
        if task not in self.tasks:
            raise InputError(f"no routing policy for task {task!r}; known: {', '.join(sorted(self.tasks))} "
                             f"(add [router.tasks.{task}] models = [...] to ragkit.toml).")
        return self.tasks[task]


def _number(where: str, name: str, v, low: float = 0.0, high: float = float("inf")) -> float | None:
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not low <= v <= high:
        raise ConfigError(f"{where}: {name} must be a number from {low:g} to {high:g}, not {v!r}.")
    return float(v)


def load_policy() -> Policy:
    """The article's matrix, overridden by [router]/[budget] in your user config, then ./ragkit.toml."""
    from ragkit.config import project_config_path, user_config_path

    tasks, floor, ttft, daily, source = dict(ARTICLE_MATRIX), None, None, None, "the article's selection matrix"
    for path in (user_config_path(), project_config_path()):
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML ({exc}). Fix the file or move it aside.") from None
        router, budget = data.get("router", {}), data.get("budget", {})
        if not router and not budget:
            continue
        source = str(path)
        for task, table in (router.get("tasks") or {}).items():
            models = table.get("models") if isinstance(table, dict) else None
            if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
                raise ConfigError(f'{path}: [router.tasks.{task}] needs models = ["first", "fallback", ...].')
            tasks[task] = tuple(models)
        floor = _number(str(path), "[router] floor", router.get("floor"), 0, 1) if "floor" in router else floor
        ttft = _number(str(path), "[router] max_ttft_s", router.get("max_ttft_s")) if "max_ttft_s" in router else ttft
        daily = _number(str(path), "[budget] daily_usd", budget.get("daily_usd")) if "daily_usd" in budget else daily
    return Policy(tasks, floor, ttft, daily, source)


def spent_today(ledger=None) -> float:
    """What the ledger recorded since midnight UTC."""
    from ragkit.ledger import Ledger

    ledger = ledger if ledger is not None else Ledger()
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return sum(e.cost_usd for e in ledger.entries(midnight))


@dataclass(frozen=True)
class Candidate:
    model: str
    kept: bool
    reason: str                   # why it was kept or dropped
    accuracy: float | None = None
    measured: bool = False
    ttft_s: float | None = None
    strategy: str | None = None
    cost_usd: float | None = None  # upper bound per query on this corpus


@dataclass(frozen=True)
class Route:
    task: str
    question: str
    floor: float | None
    max_ttft_s: float | None
    budget_left_usd: float | None
    candidates: tuple[Candidate, ...]     # in policy order
    order: tuple[str, ...]                # kept, cheapest first: the chosen model, then its fallbacks
    policy: str

    @property
    def chosen(self) -> str | None:
        return self.order[0] if self.order else None

    def to_dict(self) -> dict:
        return {**asdict(self), "chosen": self.chosen}

    def explain(self) -> list[str]:
        lines = [f"task {self.task} ({self.policy}); floor {self.floor if self.floor is not None else '-'}, "
                 f"max TTFT {f'{self.max_ttft_s:g} s' if self.max_ttft_s is not None else '-'}, "
                 f"budget left today {usd(self.budget_left_usd)}"]
        for c in self.candidates:
            mark = "kept   " if c.kept else "dropped"
            lines.append(f"  {mark} {c.model}: {c.reason}")
        lines.append(f"chosen: {self.chosen}" + (f" (fallbacks: {', '.join(self.order[1:])})" if len(self.order) > 1 else "")
                     if self.chosen else "chosen: none (every candidate was dropped, as said above): lower the floor, "
                                         "raise the budget or add candidates under [router.tasks].")
        return lines


def decide(session, question: str, *, task: str = DEFAULT_TASK, floor: float | None = None,
           max_ttft_s: float | None = None, policy: Policy | None = None, ledger=None,
           answer_tokens: int | None = None, strategy: str | None = None) -> Route:
    """The routing decision for this corpus and question (nothing is called)."""
    from ragkit.models import get_model

    policy = policy or load_policy()
    floor = policy.floor if floor is None else floor
    max_ttft_s = policy.max_ttft_s if max_ttft_s is None else max_ttft_s
    left = None
    if policy.daily_usd is not None:
        left = policy.daily_usd - spent_today(ledger if ledger is not None else session.ledger)
    out = []
    for name in policy.candidates(task):
        spec = get_model(name)
        measured = spec.measured_accuracy(task)
        acc = measured["accuracy"] if measured else None
        facts = dict(model=spec.id, accuracy=acc, measured=measured is not None, ttft_s=spec.ttft_s)
        if measured and floor is not None and acc < floor:
            out.append(Candidate(kept=False, reason=f"measured accuracy {acc:.2f} (n={measured['n']}) is under the "
                                                    f"floor {floor:.2f}", **facts))
            continue
        if max_ttft_s is not None and spec.ttft_s > max_ttft_s:
            out.append(Candidate(kept=False, reason=f"TTFT {spec.ttft_s:g} s is over the bound {max_ttft_s:g} s",
                                 **facts))
            continue
        try:
            session.provider(spec)   # reads the key from the environment; calls nothing
        except MissingKey as exc:
            out.append(Candidate(kept=False, reason=f"{exc.variable} is not set", **facts))
            continue
        except ConfigError as exc:
            out.append(Candidate(kept=False, reason=f"cannot call it: {exc}", **facts))
            continue
        try:
            plan = session.plan(question, model=spec.id, answer_tokens=answer_tokens, strategy=strategy)
        except InputError as exc:
            out.append(Candidate(kept=False, reason=f"cannot plan: {exc}", **facts))
            continue
        cost = plan.estimated_cost_usd
        if left is not None and cost > left:
            out.append(Candidate(kept=False, reason=f"{plan.strategy}, at most {usd(cost)}: over what is left of "
                                                    f"the daily budget ({usd(max(left, 0))})",
                                 strategy=plan.strategy, cost_usd=cost, **facts))
            continue
        quality = (f"measured accuracy {acc:.2f} (n={measured['n']})" if measured
                   else "unmeasured: kept by policy alone")
        out.append(Candidate(kept=True, reason=f"{quality}; {plan.strategy}, at most {usd(cost)} per query",
                             strategy=plan.strategy, cost_usd=cost, **facts))
    order = tuple(c.model for c in sorted((c for c in out if c.kept), key=lambda c: c.cost_usd))
    return Route(task, question, floor, max_ttft_s, left, tuple(out), order, policy.source)


# ProviderError.kind -> why the next candidate answers. Any other kind stops: a wrong key, an unknown
# model, a request the API refused as malformed (another model would be charged for the same mistake),
# a malformed reply, or a stream cut after part of the answer was already shown.
FALLBACK_KINDS = {"rate_limit": "rate-limited", "server": "server error", "timeout": "timeout or connection failure",
                  "connection": "timeout or connection failure", "context_length": "context length"}


def fallback_reason(exc: Exception) -> str | None:
    """Why the next candidate should answer after this failure (retries already spent), or None."""
    return FALLBACK_KINDS.get(exc.kind) if isinstance(exc, ProviderError) else None


@dataclass(frozen=True)
class Attempt:
    model: str
    error: str
    reason: str


def ask_routed(session, question: str, *, task: str = DEFAULT_TASK, floor: float | None = None,
               max_ttft_s: float | None = None, max_cost_usd: float | None = None, **ask_kw):
    """Session.ask on the routed model, falling back down the route; the Answer's `route` says who
    answered and why (each paid attempt is in the ledger through Session.ask)."""
    from dataclasses import replace

    route = decide(session, question, task=task, floor=floor, max_ttft_s=max_ttft_s,
                   answer_tokens=ask_kw.get("answer_tokens"), strategy=ask_kw.get("strategy"))
    order = [m for m in route.order
             if max_cost_usd is None or next(c for c in route.candidates if c.model == m).cost_usd <= max_cost_usd]
    if not order:
        why = "; ".join(f"{c.model}: {c.reason}" for c in route.candidates)
        cap = f" within --max-cost {usd(max_cost_usd)}" if max_cost_usd is not None else ""
        raise ConfigError(f"no model can answer this {task} question{cap} ({why}); lower the floor, raise the "
                          "budget or add candidates under [router.tasks].")
    attempts: list[Attempt] = []
    shown = []   # once any text reached the reader, no other model answers: two models' texts never glue
    on_text = ask_kw.pop("on_text", None)

    def relay(text: str) -> None:
        shown.append(text)
        on_text(text)

    for model in order:
        try:
            answer = session.ask(question, model=model, on_text=relay if on_text else None, **ask_kw)
        except ProviderError as exc:
            why = fallback_reason(exc)
            if why is None or shown or model == order[-1]:
                raise
            attempts.append(Attempt(model, str(exc), why))
            continue
        chosen = next(c for c in route.candidates if c.model == model)
        because = (f"the cheapest candidate that clears the policy ({chosen.reason})" if not attempts else
                   f"fallback after {', '.join(f'{a.model} ({a.reason})' for a in attempts)}")
        return replace(answer, route={"task": task, "answered_by": model, "why": because,
                                      "attempts": [asdict(a) for a in attempts], "decision": route.to_dict()})
    raise AssertionError("unreachable")


def check_spend(cost_usd: float, max_cost_usd: float | None, ledger=None) -> None:
    """Refuses a call whose upper-bound cost is over max_cost_usd, or would take today's spend past
    [budget] daily_usd."""
    if max_cost_usd is not None and cost_usd > max_cost_usd:
        raise ConfigError(f"this question costs at most {usd(cost_usd)}, over --max-cost {usd(max_cost_usd)}; "
                          "raise --max-cost, use a cheaper model or -m auto.")
    daily = load_policy().daily_usd
    if daily is not None:
        spent = spent_today(ledger)
        if spent + cost_usd > daily:
            raise ConfigError(f"today's spend {usd(spent)} plus this question's {usd(cost_usd)} would pass the daily "
                              f"budget {usd(daily)} ([budget] daily_usd); use -m auto to route cheaper, or raise it.")
