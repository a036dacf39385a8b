"""LLAMA_CLOUD_CUSTOM_HEADERS and LLAMA_PARSE_API_KEY, read as the official SDK reads them
(llama_cloud/_client.py), with a config error where the SDK would drop a line unsaid."""

from __future__ import annotations

import pytest

from exporter.config import ConfigError, parse_config
from exporter.config.headers import CUSTOM_HEADERS_ENV

PROJECT = {"projects": [{"id": "p"}]}
KEY = {"LLAMA_CLOUD_API_KEY": "llx-headers-test"}
SECRET_VALUE = "cf-access-secret-0123456789"


def headers(text: str) -> list[tuple[str, str]]:
    config = parse_config(PROJECT, {**KEY, CUSTOM_HEADERS_ENV: text})
    return [(name, value.get()) for name, value in config.api_headers]


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(PROJECT, env)
    return info.value.problems


def test_none_unless_the_variable_is_set() -> None:
    assert parse_config(PROJECT, KEY).api_headers == ()
    assert headers("") == []


def test_one_header_a_line_split_at_the_first_colon_and_stripped() -> None:
    text = "CF-Access-Client-Id: abc\r\n\n  X-Trace :  a:b:c  \nX-Empty:\n"
    assert headers(text) == [("CF-Access-Client-Id", "abc"), ("X-Trace", "a:b:c"), ("X-Empty", "")]


def test_a_name_given_twice_keeps_the_last_value() -> None:
    assert headers("X-Team: a\nx-team: b") == [("x-team", "b")]


def test_values_never_show_in_a_repr() -> None:
    config = parse_config(PROJECT, {**KEY, CUSTOM_HEADERS_ENV: f"X-Secret: {SECRET_VALUE}"})
    assert SECRET_VALUE not in repr(config)
    assert SECRET_VALUE not in repr(config.api_headers)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"X-Ok: 1\n{SECRET_VALUE}", 'line 2 is not "Name: value"'),
        (
            f"X Bad: {SECRET_VALUE}",
            'line 1 is not "Name: value" (the name is not an HTTP header name)',
        ),
        (f": {SECRET_VALUE}", 'line 1 is not "Name: value" (the name is not an HTTP header name)'),
        (f"X-Ok: {SECRET_VALUE}\u00e9", "line 1: the value of X-Ok must be printable ASCII"),
        (f"X-Ok: a\x00{SECRET_VALUE}", "line 1: the value of X-Ok must be printable ASCII"),
        (
            f"authorization: Bearer {SECRET_VALUE}",
            "line 1 sets Authorization, which the exporter sets itself (the exporter sends the "
            "API key in it)",
        ),
        (
            "Accept-Encoding: br",
            "line 1 sets Accept-Encoding, which the exporter sets itself (the exporter asks for "
            "gzip, which it reads bounded)",
        ),
        (
            "Host: elsewhere",
            "line 1 sets Host, which the exporter sets itself (it comes from base_url)",
        ),
    ],
)
def test_a_line_that_cannot_be_sent_is_a_config_error_that_quotes_no_value(
    text: str, problem: str
) -> None:
    found = problems({**KEY, CUSTOM_HEADERS_ENV: text})
    assert found == [f"{CUSTOM_HEADERS_ENV}: {problem}"]
    assert SECRET_VALUE not in " ".join(found)


def test_every_bad_line_is_named() -> None:
    found = problems({**KEY, CUSTOM_HEADERS_ENV: "one\nX-Ok: 1\ntwo\nAuthorization: x"})
    lines = [p.removeprefix(f"{CUSTOM_HEADERS_ENV}: ").split(" ", 2)[:2] for p in found]
    assert lines == [["line", "1"], ["line", "3"], ["line", "4"]]


def test_llama_parse_api_key_stands_in_for_an_unset_llama_cloud_api_key() -> None:
    (project,) = parse_config(PROJECT, {"LLAMA_PARSE_API_KEY": "llx-parse"}).projects
    assert project.api_key.get() == "llx-parse"
    assert project.key_source == "the LLAMA_PARSE_API_KEY environment variable"
    # As in the SDK, an empty LLAMA_CLOUD_API_KEY counts as unset; a set one wins.
    env = {"LLAMA_CLOUD_API_KEY": "", "LLAMA_PARSE_API_KEY": "llx-parse"}
    assert parse_config(PROJECT, env).projects[0].api_key.get() == "llx-parse"
    env = {"LLAMA_CLOUD_API_KEY": "llx-cloud", "LLAMA_PARSE_API_KEY": "llx-parse"}
    assert parse_config(PROJECT, env).projects[0].api_key.get() == "llx-cloud"
    # The file's own key comes first.
    raw = {"llamacloud": {"api_key": "llx-file"}, **PROJECT}
    assert parse_config(raw, {"LLAMA_PARSE_API_KEY": "llx-parse"}).projects[0].api_key.get() == (
        "llx-file"
    )


def test_a_bad_llama_parse_api_key_is_named_and_never_quoted() -> None:
    found = problems({"LLAMA_PARSE_API_KEY": "llx-a b c"})
    assert found[0].startswith("LLAMA_PARSE_API_KEY: an API key is printable ASCII")
    assert "llx-a b c" not in " ".join(found)
