"""config.fields: values checked strictly (no number from a string or a boolean) and said
in the words the docs use, never the validation library's."""

from __future__ import annotations

from typing import Any

import pytest

from tests.config.helpers import problems

NUMBERS = {
    "page_size": "a whole number",
    "max_retries": "a whole number",
    "max_pages": "a whole number",
    "max_response_bytes": "a whole number",
    "full_listing_every": "a whole number",
    "timeout_seconds": "a number",
    "incremental_overlap_seconds": "a number",
}


@pytest.mark.parametrize("value", ["100", True, "5.0", [5], None])
@pytest.mark.parametrize("key", sorted(NUMBERS))
def test_numbers_are_never_taken_from_strings_or_booleans(key: str, value: Any) -> None:
    """No lax conversion: ``"100"`` is not 100 and ``true`` is not 1, as before."""
    found = problems({"llamacloud": {key: value}, "projects": [{"id": "p", "api_key": "k"}]})
    assert found == [f"llamacloud.{key}: must be {NUMBERS[key]}"]


def test_no_message_is_in_the_validation_library_s_words() -> None:
    """Its messages can quote the input; every message is the exporter's own phrase."""
    secret = "llx-Qw3rTy7UiOp9AsDf"
    raw = {
        "llamacloud": {"page_size": secret, "listing": secret, "base_url": [secret]},
        "projects": [{"id": [secret], "name": {secret: 1}, "api_key": 5, "page_size": {}}],
        "web": {"listen_address": 8080},
        "detail": {"error_classes": [{"name": secret, "match": [secret]}, [secret]]},
        "discovery": {"include": [secret], "interval_seconds": secret},
        "sharding": {"total": secret},
        "state": {"path": [secret]},
    }
    found = problems(raw)
    assert len(found) >= 15, found  # each key above has its problem
    text = "\n".join(found)
    for word in (secret, "Input should", "input_value", "type=", "pydantic"):
        assert word not in text, word


def test_strings_that_are_not_unicode_text_are_config_errors() -> None:
    found = problems({"projects": [{"id": "p\ud800", "api_key": "k"}]})
    assert found == ["projects[0].id: not valid Unicode text (an unpaired surrogate)"]
    found = problems({"projects": [{"id": "p", "api_key": "k", "n\udc00": 1}]})
    assert found == ["projects[0].n\\udc00: unknown key"]
