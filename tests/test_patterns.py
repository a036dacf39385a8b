"""patterns: regular expressions from the config run by RE2, linear whatever the text."""

from __future__ import annotations

import pytest

from tests.aggregate.helpers import detail
from tests.config.helpers import ENV, detail_problems
from tests.helpers import BACKTRACKING, WORDS, python_in_a_child


@pytest.mark.parametrize(
    ("match", "reason"),
    [
        ("(?i)timed? ?out(?= after)", "invalid perl operator: (?="),  # lookahead
        ("(?<!no )timeout", "invalid perl operator: (?<!"),  # lookbehind
        (r"(\w+) \1", r"invalid escape sequence: \1"),  # backreference
        ("(?i)time++out", "bad repetition operator: ++"),  # possessive
        ("(?>time)out", "invalid perl operator: (?>"),  # atomic group
        ("timeout\\Z", r"invalid escape sequence: \Z"),  # RE2 spells it \z
    ],
)
def test_what_re2_cannot_run_in_linear_time_is_a_config_error(match: str, reason: str) -> None:
    """Never handed to a backtracking engine instead: the key path and RE2's reason."""
    classes = [
        {"name": "a", "match": "a"},
        {"name": "b", "match": "b"},
        {"name": "c", "match": match},
    ]
    assert detail_problems(error_classes=classes) == [
        f"detail.error_classes[2].match: invalid regular expression (RE2 syntax, as in "
        f"Prometheus): {reason}"
    ]


def test_an_expression_past_the_memory_bound_is_a_config_error() -> None:
    """Linear in the text, and in the expression's size: that is bounded too."""
    many = "|".join(r"(?:\w+\s?){1000}" + name for name in "abcdefghijklmnopqrst")
    assert detail_problems(error_classes=[{"name": "big", "match": many}]) == [
        "detail.error_classes[0].match: invalid regular expression (RE2 syntax, as in "
        "Prometheus): pattern too large - compile failed"
    ]
    three = "|".join(r"(?:\w+\s?){1000}" + name for name in "abc")
    assert (
        detail(error_classes=[{"name": "big", "match": three}]).classify("w " * 1000 + "c") == "big"
    )


def test_a_backtracking_class_classifies_4_kib_of_words_at_once() -> None:
    """In Python's re this search of the first 4 KiB of an error never ends (and holds the
    interpreter); in RE2 it is linear. A child process, so that a hang fails the test."""
    code = f"""
from exporter.config import parse_config
raw = {{"projects": [{{"id": "p"}}], "detail": {{"error_classes": [
    {{"name": "slow", "match": {BACKTRACKING!r}}}]}}}}
d = parse_config(raw, {ENV!r}).detail
print(d.classify({WORDS!r}), d.classify({WORDS!r} * 3), d.classify("upstream call: timeout"))
"""
    assert python_in_a_child(code).split() == ["other", "other", "slow"]


def test_re2_semantics_where_they_differ_from_python() -> None:
    d = detail(
        error_classes=[
            {"name": "word", "match": r"^\w+$"},  # \w is ASCII in RE2, as in Prometheus
            {"name": "letters", "match": r"^\pL+$"},
            {"name": "ending", "match": "end$"},  # $ is the end of the text only
        ]
    )
    assert d.classify("timeout") == "word"
    assert d.classify("délai") == "letters"
    assert d.classify("the end") == "ending"
    assert d.classify("the end\n") == "other"
    # A lone surrogate (the standard library's JSON parser lets one through) is still text.
    assert (
        detail(error_classes=[{"name": "t", "match": "(?i)timed out"}]).classify("\ud800 Timed out")
        == "t"
    )
