"""LLM-as-judge for `ragkit compare --judge MODEL`: free-form answers graded against the references.

Deterministic scoring stays the default; a judge is for references a string match cannot check. The
judge is called through the same providers as the answers, its replies are cached by prompt (a re-run
pays nothing twice), and its calls go to the ledger under their own task ("compare:judge"), so its
cost is never mixed into the $/task of the models it grades.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Sequence

from ragkit.errors import RagkitError

JUDGE_TASK = "compare:judge"
JUDGE_MAX_TOKENS = 8
JUDGE_SYSTEM = (
    "You grade answers to questions. You are given a question, the reference answers that are known to be "
    "correct, and a candidate answer. The candidate is CORRECT when it gives the same fact as one of the "
    "references, even in other words or with more detail; it is INCORRECT when it gives another fact, "
    "contradicts the references, or does not answer. Reply with exactly one word: CORRECT or INCORRECT.")
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT)\b", re.IGNORECASE)


class JudgeError(RagkitError):
    """The judge's reply named no verdict."""


def judge_prompt(question: str, answers: Sequence[str], candidate: str) -> str:
    references = "\n".join(f"- {a}" for a in answers)
    return (f"Question: {question}\n\nReference answers:\n{references}\n\n"
            f"Candidate answer:\n{candidate.strip()}\n\nVerdict (CORRECT or INCORRECT):")


def parse_verdict(text: str) -> int:
    """1 for CORRECT, 0 for INCORRECT; the first verdict word counts. No verdict word: JudgeError."""
    match = _VERDICT.search(text)
    if match is None:
        raise JudgeError(f"the judge replied {text.strip()[:60]!r}, which is neither CORRECT nor INCORRECT.")
    return int(match.group(1).upper() == "CORRECT")


@dataclass(frozen=True)
class Grade:
    verdict: int                  # 1 correct, 0 incorrect
    cost_usd: float               # paid for this grade now (0 when it came from the cache)
    cached: bool


@dataclass
class Judge:
    """Grades through `session`'s provider for `model`; thread-safe as the providers and the cache are."""

    session: object               # answer.Session: its providers (base_url, retries) and its ledger
    model: str
    cache: object                 # evals.cache.ResponseCache

    def __post_init__(self) -> None:
        from ragkit.models import get_model

        self.spec = get_model(self.model)
        self.model = self.spec.id

    def key(self, question: str, answers: Sequence[str], candidate: str) -> str:
        from ragkit.evals.cache import call_key

        return call_key(self.spec.id, self.spec.api_model, JUDGE_SYSTEM, judge_prompt(question, answers, candidate),
                        JUDGE_MAX_TOKENS, 0.0)

    def grade(self, question: str, answers: Sequence[str], candidate: str) -> Grade:
        from ragkit.evals.cache import CachedResponse
        from ragkit.ledger import account

        key = self.key(question, answers, candidate)
        hit = self.cache.get(key)
        if hit is not None:
            return Grade(parse_verdict(hit.text), 0.0, cached=True)
        done = self.session.provider(self.spec).complete(
            JUDGE_SYSTEM, judge_prompt(question, answers, candidate), max_tokens=JUDGE_MAX_TOKENS, temperature=0.0)
        cost = account(done, self.spec, task=JUDGE_TASK, strategy=None, question=question,
                       ledger=self.session.ledger).cost_usd
        verdict = parse_verdict(done.text)  # a reply with no verdict is paid for but not cached
        self.cache.put(key, self.spec.id, CachedResponse(done.text, done.input_tokens, done.output_tokens,
                                                         done.latency_s, cost, time.time(), done.ttft_s))
        return Grade(verdict, cost, cached=False)

    def estimated_cost_usd(self, calls: int, answer_tokens: int) -> float:
        """Upper bound for `calls` grades: the instructions, a question, references and a full-length answer."""
        from ragkit.costs import cost_usd

        prompt_tokens = 120 + 80 + answer_tokens  # instructions ~110 tokens; question + references <= 80
        return calls * float(cost_usd(self.spec, prompt_tokens, JUDGE_MAX_TOKENS))
