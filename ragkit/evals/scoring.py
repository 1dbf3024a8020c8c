"""Deterministic, judge-free scorers (Liu et al. 2023's best_subspan_em and key-value containment).

Scorers are small closures over their settings, inspect_ai style: `scorer = subspan_em()` then
`scorer(prediction, answers) -> float` in [0, 1].
"""
from __future__ import annotations

import re
import string
from typing import Callable, Sequence

Scorer = Callable[[str, Sequence[str]], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, strip punctuation, drop a/an/the, collapse white space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(prediction: str) -> str:
    """The paper's cut: everything up to the first newline, stripped (so copying the context can't score)."""
    return prediction.split("\n")[0].strip()


def best_subspan_em(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if any normalised gold answer is a substring of the normalised (first-line) prediction."""
    pred = normalize_answer(first_line(prediction))
    for answer in answers:
        gold = normalize_answer(answer)
        if gold and gold in pred:
            return 1.0
    return 0.0


def subspan_em() -> Scorer:
    """Scorer for QA and single needles: best_subspan_em over any of the gold answers."""
    return best_subspan_em


def all_needles() -> Scorer:
    """Scorer for multi-needle questions: fraction of the needles' answers found (each by subspan EM).

    Not cut at the first newline: several needles are often listed one per line.
    """

    def score(prediction: str, answers: Sequence[str]) -> float:
        if not answers:
            return 0.0
        pred = normalize_answer(prediction)
        found = sum(1 for a in answers if normalize_answer(a) and normalize_answer(a) in pred)
        return found / len(answers)

    return score


def contains(ignore_case: bool = True) -> Scorer:
    """Scorer for key-value retrieval: the gold value appears in the prediction (case-insensitive)."""

    def score(prediction: str, answers: Sequence[str]) -> float:
        pred = prediction.lower() if ignore_case else prediction
        for answer in answers:
            gold = answer.lower() if ignore_case else answer
            if gold and gold in pred:
                return 1.0
        return 0.0

    return score


SCORERS: dict[str, Callable[[], Scorer]] = {
    "subspan_em": subspan_em,
    "all_needles": all_needles,
    "contains": contains,
}


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD token F1 of the (first-line) prediction against its best-matching gold answer."""
    from collections import Counter

    pred = normalize_answer(first_line(prediction)).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
