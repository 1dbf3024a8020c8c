"""The planner: stuff the documents into the prompt when they fit the model's practical limit, else retrieve.

The practical limit is shared by everything sent and received: the instructions, the question, the
answer and the context. What is left after that reserve is the context budget. Documents whose
prompt tokens (their texts in numbered fences, inflated by the counting margin where counts are
estimates) fit the budget are stuffed whole; a larger corpus is chunked, retrieved through FAISS
and packed into the budget.

One plan serves every caller: `ragkit plan`, `Session.prepare` (so `ragkit ask` and its dry run)
and the eval's retrieve strategy all call `plan_for_sources` or `plan` and nothing rewrites the
result. Reserve and context are counted from the prompt as it is really rendered (prompt.Framing),
so the plan's input figure is what ask sends (exact models) or an upper bound of it (estimates).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ragkit.errors import InputError

DEFAULT_ANSWER_TOKENS = 1024
STRATEGIES = ("stuff", "retrieve")


@dataclass(frozen=True)
class Plan:
    strategy: str                  # "stuff" | "retrieve"
    model: str
    corpus_tokens: int             # the documents' texts as counted (estimate where exact is False)
    documents: int
    practical_limit_tokens: int
    context_window_tokens: int
    limit_source: str
    instructions_tokens: int       # system prompt and user template around the sources (model's tokens)
    question_tokens: int
    answer_tokens: int
    margin_tokens: int             # the documents' estimate's safety margin (0 when counts are exact)
    reserve_tokens: int            # instructions + question + answer
    budget_tokens: int             # practical limit - reserve: room for context, in the model's tokens
    pack_budget_tokens: int        # the same budget in the counting encoding's tokens (margin removed)
    stuffed_tokens: int            # the documents as stuffing sends them: texts in their fences (model's tokens)
    context_tokens: int            # context the prompt will carry at most (model's tokens)
    estimated_input_tokens: int    # instructions + question + context: what ask sends, at most
    estimated_cost_usd: float      # input estimate + a full-length answer: an upper bound per query
    exact: bool
    encoding: str
    forced: bool                   # the strategy was asked for, not chosen by the planner
    reason: str
    warning: str = ""              # set when a forced strategy passes the practical limit

    def to_dict(self) -> dict:
        return asdict(self)


def _no_room_message(spec, instructions: int, question: int, answer: int) -> str:
    """Why nothing fits, naming each part's tokens and what to shorten: the largest part."""
    fixes = {"instructions": "use a smaller --schema (its fields and descriptions are sent in the instructions)",
             "question": "shorten the question", "answer": "lower --answer-tokens"}
    parts = {"instructions": instructions, "question": question, "answer": answer}
    largest = max(parts, key=parts.get)
    return (f"the instructions ({instructions:,} tokens), the question ({question:,}) and a {answer:,}-token answer "
            f"need {instructions + question + answer:,} tokens, more than {spec.name}'s practical limit of "
            f"{spec.practical_limit_tokens:,}; the largest part is the {largest}: {fixes[largest]}.")


def plan_for_sources(model, sources, question: str = "", *, answer_tokens: int | None = None,
                     strategy: str | None = None, counts=None, frame=None) -> Plan:
    """The plan for these sources (prompt.SourceRef, numbered any way) and question, counted exactly
    as build_prompt renders them. `counts`: the sources' prompt.SourceTokens when already known (a
    Session keeps them per encoding)."""
    from ragkit.models import get_model
    from ragkit.prompt import Framing
    from ragkit.tokens import counter_for

    spec = get_model(model)
    framing = Framing(counter_for(spec), frame)   # frame: see prompt.build_prompt (a structured reply's block)
    counts = counts if counts is not None else framing.count_sources(list(sources))
    instructions = framing.scaffold_tokens("")
    return plan(spec, corpus_tokens=counts.text_tokens, framing_tokens=counts.framing_tokens,
                documents=counts.documents, instructions_tokens=instructions,
                question_tokens=framing.scaffold_tokens(question) - instructions,
                answer_tokens=answer_tokens, strategy=strategy)


def plan(model, *, corpus_tokens: int, question: str = "", answer_tokens: int | None = None,
         instructions_tokens: int | None = None, question_tokens: int | None = None, framing_tokens: int = 0,
         documents: int = 0, strategy: str | None = None) -> Plan:
    """Decide stuff or retrieve for `corpus_tokens` of context plus `framing_tokens` of fences around it.

    All counts are in the model's counting encoding (raw; the margin is applied here). The
    instructions default to ragkit's answer prompt and the question's tokens to its place in it;
    an eval with its own prompt passes its own. strategy forces "stuff" (allowed up to the context
    window, with a warning past the practical limit) or "retrieve".
    """
    from ragkit.costs import cost_usd
    from ragkit.models import get_model
    from ragkit.tokens import counter_for

    spec = get_model(model)
    counter = counter_for(spec)
    if strategy not in (None, *STRATEGIES):
        raise InputError(f"strategy {strategy!r}: use stuff or retrieve.")
    if corpus_tokens < 0:
        raise InputError("corpus tokens cannot be negative.")
    if answer_tokens is None:
        answer_tokens = min(DEFAULT_ANSWER_TOKENS, spec.max_output_tokens)
    if answer_tokens < 1:
        raise InputError("answer tokens must be at least 1.")
    if answer_tokens > spec.max_output_tokens:
        raise InputError(f"{spec.name} writes at most {spec.max_output_tokens:,} tokens per answer; "
                         f"ask for --answer-tokens {spec.max_output_tokens} or fewer.")
    if instructions_tokens is None or question_tokens is None:
        from ragkit.prompt import Framing

        framing = Framing(counter)
        bare = framing.scaffold_tokens("")
        instructions_tokens = bare if instructions_tokens is None else instructions_tokens
        question_tokens = framing.scaffold_tokens(question) - bare if question_tokens is None else question_tokens
    # The margin applies to running sums, as to the finished prompt: instructions, then + question,
    # then + documents; so stuffed tokens + reserve is the whole stuffed prompt + answer, not more.
    scaffold = instructions_tokens + question_tokens
    instructions = counter.planning_tokens(instructions_tokens)
    asked = counter.planning_tokens(scaffold) - instructions
    limit, window = spec.practical_limit_tokens, spec.context_window_tokens
    reserve = instructions + asked + answer_tokens
    budget = limit - reserve
    if budget <= 0:
        raise InputError(_no_room_message(spec, instructions, asked, answer_tokens))
    framed = corpus_tokens + framing_tokens
    needed = counter.planning_tokens(scaffold + framed) - counter.planning_tokens(scaffold)
    fits = needed <= budget
    chosen = strategy or ("stuff" if fits else "retrieve")
    how = "" if counter.exact else f", estimated with {counter.encoding_name} + {counter.margin:.0%} margin"
    docs = f"the {documents:,} documents" if documents else "the documents"
    docs = f"{docs} in their source fences ({needed:,} tokens{how})"
    limit_words = f"{spec.name}'s {'measured' if spec.limit_is_measured else 'practical'} limit of {limit:,} tokens"
    left = f"the {budget:,}-token budget left in {limit_words} after {reserve:,} reserved for instructions, question and answer"
    packs = "ragkit retrieves the most relevant chunks and packs them into that budget"
    warning = ""
    if chosen == "stuff" and fits:
        reason = f"{docs[0].upper()}{docs[1:]} fit {left}, so all of them go into the prompt."
    elif chosen == "stuff":
        if needed > window - reserve:
            raise InputError(f"{docs} do not fit {spec.name}'s {window:,}-token context window after the "
                             f"{reserve:,}-token reserve, so they cannot be stuffed; use --strategy retrieve.")
        reason = (f"Stuffing forced (--strategy stuff): {docs} exceed {left}, but fit the {window:,}-token "
                  "context window, so all of them go into the prompt.")
        warning = (f"stuffing passes {limit_words} by {needed - budget:,} tokens; answers past that limit tend "
                   "to miss facts, so read this one as a test of the limit.")
    elif fits:
        reason = f"Retrieval forced (--strategy retrieve): {docs} would fit {left}, but {packs}."
    else:
        over = " and even the model's whole context window" if needed > window - reserve else ""
        reason = f"{docs[0].upper()}{docs[1:]} exceed {left}{over}, so {packs}."
    context = needed if chosen == "stuff" else budget
    est_input = instructions + asked + context
    return Plan(
        strategy=chosen, model=spec.id, corpus_tokens=corpus_tokens, documents=documents,
        practical_limit_tokens=limit, context_window_tokens=window, limit_source=spec.limit_source,
        instructions_tokens=instructions, question_tokens=asked, answer_tokens=answer_tokens,
        margin_tokens=needed - framed, reserve_tokens=reserve, budget_tokens=budget,
        pack_budget_tokens=budget if counter.exact else math.floor(budget / (1.0 + counter.margin)),
        stuffed_tokens=needed, context_tokens=context, estimated_input_tokens=est_input,
        estimated_cost_usd=cost_usd(spec, est_input, answer_tokens), exact=counter.exact,
        encoding=counter.encoding_name, forced=bool(strategy) and strategy != ("stuff" if fits else "retrieve"),
        reason=reason, warning=warning)
