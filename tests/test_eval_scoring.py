"""The scorers against the reference definitions (Liu et al. 2023's best_subspan_em, SQuAD normalisation)."""
from __future__ import annotations

import pytest

from ragkit.evals.scoring import all_needles, best_subspan_em, contains, normalize_answer


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower", "eiffel tower"),
    ("an apple a day", "apple day"),
    ("  Hello,   World!  ", "hello world"),
    ("U.S.A.", "usa"),
    ("the-theory", "thetheory"),          # punctuation goes first, so "the" inside a word survives
    ("Theatre of the Absurd", "theatre of absurd"),  # only whole-word articles are dropped
    ("Röntgen's ray", "röntgens ray"),
])
def test_normalize_answer_is_squad_normalisation(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("prediction, answers, expected", [
    ("Wilhelm Conrad Röntgen", ["Wilhelm Conrad Röntgen"], 1.0),
    ("It was Wilhelm Conrad Röntgen, in 1901.", ["Wilhelm Conrad Röntgen"], 1.0),   # a sub-span is enough
    ("the Beatles", ["The Beatles"], 1.0),                                            # articles
    ("Beatles", ["The Beatles"], 1.0),
    ("May 18 2018", ["May 18, 2018"], 1.0),                                          # punctuation
    ("Röntgen", ["Wilhelm Conrad Röntgen"], 0.0),                                    # gold must be inside prediction
    ("Paris\nThe answer could also be London", ["London"], 0.0),                     # cut at the first newline
    ("Paris\nLondon", ["Paris"], 1.0),
    ("\nLondon", ["London"], 0.0),              # the reference cuts before stripping: an empty first line
    ("I think 1901", ["1900", "1901"], 1.0),                                          # any gold answer
    ("I think 1902", ["1900", "1901"], 0.0),
    ("", ["x"], 0.0),
])
def test_best_subspan_em_matches_the_reference(prediction, answers, expected):
    assert best_subspan_em(prediction, answers) == expected


def test_contains_is_case_insensitive_for_key_value():
    score = contains()
    value = "bb3ba2a5-7de8-434b-a86e-a88bb9fa7289"
    assert score(f'The value is "{value.upper()}".', [value]) == 1.0
    assert score("bb3ba2a5-7de8-434b-a86e", [value]) == 0.0
    assert contains(ignore_case=False)(value.upper(), [value]) == 0.0


def test_all_needles_scores_the_fraction_found():
    score = all_needles()
    assert score("1) 4817-KZ\n2) smoked cardamom", ["4817-KZ", "smoked cardamom", "teal green"]) == pytest.approx(2 / 3)
    assert score("nothing", ["a b"]) == 0.0
