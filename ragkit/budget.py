"""The planner: stuff the documents into the prompt when they fit the model's practical limit, else retrieve.

The practical limit is shared by everything sent and received: the instructions, the question, the
answer and the context. What is left after that reserve is the context budget. A corpus whose
tokens (inflated by the counting margin where counts are estimates) fit the budget is stuffed
whole; a larger one is chunked, retrieved through FAISS and packed into the budget.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ragkit.errors import InputError

# The answer prompt's fixed text plus per-source fences, measured on ragkit's prompt template
# with a few sources; kept generous so a plan never overshoots.
DEFAULT_INSTRUCTIONS_TOKENS = 400
# Per-document framing (source number, path, fences) added to each document or chunk.
PER_DOCUMENT_TOKENS = 20
DEFAULT_ANSWER_TOKENS = 1024


@dataclass(frozen=True)
class Plan:
    strategy: str                  # "stuff" | "retrieve"
    model: str
    corpus_tokens: int             # as counted (estimate where exact is False)
    documents: int
    practical_limit_tokens: int
    limit_source: str
    instructions_tokens: int
    question_tokens: int
    answer_tokens: int
    margin_tokens: int             # the corpus estimate's safety margin (0 when counts are exact)
    reserve_tokens: int            # instructions + question + answer
    budget_tokens: int             # practical limit - reserve: room for context, in the model's tokens
    pack_budget_tokens: int        # the same budget in the counting encoding's tokens (margin removed)
    context_tokens: int            # context the prompt will carry (model's tokens, estimated)
    estimated_input_tokens: int
    estimated_cost_usd: float      # input estimate + a full-length answer: an upper bound per query
    exact: bool
    encoding: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def plan(model, *, corpus_tokens: int, question: str = "", answer_tokens: int | None = None,
         instructions_tokens: int = DEFAULT_INSTRUCTIONS_TOKENS, documents: int = 0,
         question_tokens: int | None = None) -> Plan:
    """Decide stuff or retrieve for a corpus of `corpus_tokens` (counted with the model's counter)."""
    from ragkit.costs import cost_usd
    from ragkit.models import get_model
    from ragkit.tokens import counter_for

    spec = get_model(model)
    counter = counter_for(spec)
    if corpus_tokens < 0:
        raise InputError("corpus tokens cannot be negative.")
    if answer_tokens is None:
        answer_tokens = min(DEFAULT_ANSWER_TOKENS, spec.max_output_tokens)
    if answer_tokens < 1:
        raise InputError("answer tokens must be at least 1.")
    if answer_tokens > spec.max_output_tokens:
        raise InputError(f"{spec.name} writes at most {spec.max_output_tokens:,} tokens per answer; "
                         f"ask for --answer-tokens {spec.max_output_tokens} or fewer.")
    if question_tokens is None:
        question_tokens = counter.planning_tokens(counter.count(question)) if question else 0
    limit = spec.practical_limit_tokens
    reserve = instructions_tokens + question_tokens + answer_tokens
    budget = limit - reserve
    if budget <= 0:
        raise InputError(f"the question, instructions and a {answer_tokens:,}-token answer need {reserve:,} tokens, "
                         f"more than {spec.name}'s practical limit of {limit:,}; shorten the question or lower "
                         "--answer-tokens.")
    framed = corpus_tokens + documents * PER_DOCUMENT_TOKENS
    needed = counter.planning_tokens(framed)
    margin = needed - framed
    pack_budget = budget if counter.exact else math.floor(budget / (1.0 + counter.margin))
    stuff = needed <= budget
    context = needed if stuff else budget
    est_input = reserve - answer_tokens + context
    how = "" if counter.exact else f", estimated with {counter.encoding_name} + {counter.margin:.0%} margin"
    limit_words = f"{spec.name}'s {'measured' if spec.limit_is_measured else 'practical'} limit of {limit:,} tokens"
    if stuff:
        reason = (f"The documents with their source framing ({needed:,} tokens{how}) fit the {budget:,}-token budget left in {limit_words} "
                  f"after {reserve:,} reserved for instructions, question and answer, so all of them go into the prompt.")
    else:
        over = " and even the model's whole context window" if needed > spec.context_window_tokens - reserve else ""
        reason = (f"The documents with their source framing ({needed:,} tokens{how}) exceed the {budget:,}-token budget left in {limit_words}{over}, "
                  f"so ragkit retrieves the most relevant chunks and packs them into that budget.")
    return Plan(
        strategy="stuff" if stuff else "retrieve", model=spec.id, corpus_tokens=corpus_tokens, documents=documents,
        practical_limit_tokens=limit, limit_source=spec.limit_source, instructions_tokens=instructions_tokens,
        question_tokens=question_tokens, answer_tokens=answer_tokens, margin_tokens=margin, reserve_tokens=reserve,
        budget_tokens=budget, pack_budget_tokens=pack_budget, context_tokens=context,
        estimated_input_tokens=est_input, estimated_cost_usd=cost_usd(spec, est_input, answer_tokens),
        exact=counter.exact, encoding=counter.encoding_name, reason=reason)
