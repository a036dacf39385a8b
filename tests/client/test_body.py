"""client.body: what an answer may be, read with bounds (gzip bombs, declared lengths, deep
nesting, huge tokens, odd numbers), the code label and the reason words; keys never echoed."""

from __future__ import annotations

import contextlib
import math
import tracemalloc

import httpx
import orjson
import pytest

from exporter.aggregate import aggregate
from exporter.client import ApiClient, PollError
from exporter.client.body import DETAIL_CHARS, code_label
from tests.client.helpers import KEY, PROJECT, Harness, hostile_project, listing
from tests.helpers import fragments_of
from tests.hostile import Hostile, answer, gzip_bomb, page


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>oops</html>", "invalid_response"),
        (b'{"items": [1, 2', "invalid_response"),
        (b"[1, 2]", "invalid_response"),
        (b'{"items": {"a": 1}}', "invalid_response"),
        (b'{"items": [], "next_page_token": 5}', "invalid_response"),
    ],
)
def test_a_bad_body_fails_the_poll(body: bytes, reason: str) -> None:
    h = Harness(lambda r: httpx.Response(200, content=body))
    assert h.fails().reason == reason


GZIP_BOMB = gzip_bomb(256 << 20)  # 256 MiB of "[" in about 256 KB


def test_a_gzip_bomb_fails_with_too_large_before_memory_follows(hostile: Hostile) -> None:
    hostile.behaviour = lambda request: answer(
        200, GZIP_BOMB, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    tracemalloc.start()
    try:
        error = listing(ApiClient(max_retries=0), hostile_project(hostile.url), max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.reason == "too_large"
    assert peak < 32 << 20  # bytes held at once while reading 256 MiB: a few MiB, not 256


def test_a_declared_length_over_the_limit_fails_before_reading(hostile: Hostile) -> None:
    hostile.behaviour = lambda request: answer(200, b"[" * (2 << 20))
    error = listing(ApiClient(max_retries=0), hostile_project(hostile.url), max_bytes=1 << 20)
    assert error.reason == "too_large"
    assert "max_response_bytes=1048576" in str(error)


def test_an_echoed_key_is_blanked_before_the_detail_is_cut(hostile: Hostile) -> None:
    detail = "x" * 180 + f" your key {KEY} is not valid " + "y" * 50
    hostile.behaviour = lambda request: answer(400, {"detail": detail})
    error = listing(ApiClient(max_retries=0), hostile_project(hostile.url))
    assert error.reason == "client_error"
    assert fragments_of(KEY, str(error)) == []
    assert "********" in str(error)


def test_a_reason_phrase_with_most_of_the_key_is_blanked(hostile: Hostile) -> None:
    hostile.behaviour = lambda request: answer(418, b"", reason=f"nope {KEY[2:-3]}")
    error = listing(ApiClient(max_retries=0), hostile_project(hostile.url))
    assert fragments_of(KEY, str(error)) == []


def test_a_detail_nested_a_thousand_deep_fails_the_poll_cleanly(hostile: Hostile) -> None:
    nested = b'{"detail":' + b"[" * 1000 + b"]" * 1000 + b"}"
    hostile.behaviour = lambda request: answer(500, nested)
    error = listing(ApiClient(max_retries=0), hostile_project(hostile.url))
    assert error.reason == "server_error"
    # Python 3.13's encoder reaches that deep: then the detail is shown, cut short.
    assert "too deeply nested" in str(error) or str(error) == "HTTP 500: " + "[" * DETAIL_CHARS


def test_a_megabyte_page_token_fails_the_poll_cleanly(hostile: Hostile) -> None:
    hostile.behaviour = lambda request: answer(200, page([{"session_id": "a"}], "t" * (1 << 20)))
    error = listing(ApiClient(max_retries=0), hostile_project(hostile.url), max_bytes=4 << 20)
    assert error.reason == "invalid_response"
    assert "page token longer than 8192" in str(error)


def test_numbers_too_large_and_lone_surrogates_fail_the_item_not_the_page(
    hostile: Hostile,
) -> None:
    good = {"session_id": "good", "job_metadata": {"total_input_tokens": 5}}
    raw = (
        b'{"items":['
        + orjson.dumps(good)
        + b',{"session_id":"big","job_metadata":{"total_input_tokens":'
        + b"9" * 400
        + b'}},{"session_id":"max1","job_metadata":{"total_output_tokens":1e308}},'
        + b'{"session_id":"max2","job_metadata":{"total_output_tokens":1e308}},'
        + b'{"session_id":"\\ud800","job_metadata":null},'
        + b'{"session_id":"surrogate-in-error","job_metadata":{"error":"\\udc00"}}]}'
    )
    hostile.behaviour = lambda request: answer(200, raw)
    client = ApiClient(max_retries=0)
    try:
        result = aggregate(p.items or [] for p in client.pages(hostile_project(hostile.url), 10))
    finally:
        client.close()
    snap = result.snapshot
    assert snap.sessions == 2  # "good" and the error whose text holds a lone surrogate
    assert snap.error == 1
    assert snap.invalid_items == 4
    assert snap.input_tokens == 5 and snap.output_tokens == 0
    assert all(math.isfinite(v) for v in (snap.input_tokens, snap.output_tokens, snap.turns))


def test_the_code_label_is_one_of_a_bounded_set() -> None:
    labels = {code_label(status) for status in range(0, 1000)}
    assert labels == {
        *("200", "400", "401", "403", "404", "408", "409", "413", "422", "429"),
        *("500", "502", "503", "504"),
        *("1xx", "2xx", "3xx", "4xx", "5xx", "other"),
    }


def test_a_server_answering_every_status_keeps_the_code_label_bounded() -> None:
    statuses = iter(range(100, 1000))
    h = Harness(lambda request: httpx.Response(next(statuses), json={"detail": "x"}), 0)
    for _ in range(900):
        with contextlib.suppress(PollError):
            list(h.client.pages(PROJECT, 1))
    h.client.close()
    assert len(h.codes) == 900
    assert len(set(h.codes)) <= 20


def test_an_error_answer_with_an_unreadable_body_keeps_its_status(hostile: Hostile) -> None:
    hostile.behaviour = lambda request: answer(
        503, b"\x00not brotli", reason="Busy", headers={"Content-Encoding": "br"}
    )
    codes: list[str] = []
    client = ApiClient(max_retries=1, on_request=codes.append, wait=lambda seconds: False)
    error = listing(client, hostile_project(hostile.url))
    assert error.reason == "server_error"
    assert codes == ["503", "503"]  # retried, as a 503 is


def test_a_page_too_large_is_counted_by_its_status(hostile: Hostile) -> None:
    hostile.behaviour = lambda request: answer(200, b"[" * (2 << 20))
    codes: list[str] = []
    client = ApiClient(max_retries=0, on_request=codes.append)
    assert listing(client, hostile_project(hostile.url)).reason == "too_large"
    assert codes == ["200"]
