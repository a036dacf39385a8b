"""What the API answers, read with bounds: bodies, pages, error details, and the reason
words of failed polls."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import httpx

from ..config import redact
from ..text import is_text

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _DECODE_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - orjson is a dependency; stdlib json still works
    _loads = json.loads
    _DECODE_ERRORS = (ValueError,)


# A page body's identity: its length and hash. Equal keys are taken for equal bodies (a
# 64-bit hash and the length must both collide to mistake one page for another).
PageKey = tuple[int, int]


class Headers(Protocol):
    """A response's headers, looked up by name whatever its case: ``httpx.Headers``, or
    :class:`.wire.Fields`."""

    def get(self, name: str, default: Any = None, /) -> Any: ...


class Streamed(Protocol):
    """A response whose body is still to be read: httpx's, or :class:`.wire.Answer`."""

    @property
    def headers(self) -> Headers: ...

    def iter_raw(self) -> Iterator[bytes]: ...


class Page(NamedTuple):
    """One page of a listing: its items (None when ``reuse`` took the body unparsed)."""

    items: list[Any] | None
    key: PageKey
    token: str | None  # the next page's token, None on the last page
    stop: bool  # ``reuse`` said the listing should stop here


class PollError(Exception):
    """A failed listing. ``reason`` is a fixed word, safe to use as a metric label."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.pages = 0  # pages fetched before the failure
        self.incremental = False  # the failed listing was incremental


def read_body(response: Streamed, limit: int, *, strict: bool) -> bytes:
    """The body, decompressed, as it streams in, never more than ``limit`` bytes of it.

    A gzip page of 1 MB can unpack to 1 GB: decompression is bounded chunk by chunk, so
    memory never follows the server. ``strict``: past the limit the poll fails (``too_large``);
    otherwise (an error answer, read only for its detail) the body is cut there.
    """
    if isinstance(response, httpx.Response) and response.is_stream_consumed:
        # built in memory (httpx.MockTransport): decoded already
        content = response.content
        if strict and len(content) > limit:
            raise _too_large(limit)
        return content[: limit + 1]
    encoding = response.headers.get("content-encoding", "").strip().lower()
    decoder: Any = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)  # a gzip or zlib header, either
    elif encoding not in ("", "identity"):
        if not strict:
            return b""  # an error answer's detail is a nicety: its status is what counts
        raise PollError("invalid_response", "the response uses a compression it was not offered")
    declared = response.headers.get("content-length", "")
    if strict and decoder is None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        for raw in response.iter_raw():
            data = raw if decoder is None else decoder.decompress(raw, limit + 1 - size)
            size += len(data)
            chunks.append(data)
            if size > limit:
                if strict:
                    raise _too_large(limit)
                break
        if decoder is not None and size <= limit:
            tail = decoder.flush()
            size += len(tail)
            chunks.append(tail)
            if strict and size > limit:
                raise _too_large(limit)
    except zlib.error:
        if not strict:
            return b""
        raise PollError("invalid_response", "the response is not valid gzip") from None
    return b"".join(chunks)[: limit + 1]


def _too_large(limit: int) -> PollError:
    return PollError("too_large", f"the response is larger than max_response_bytes={limit}")


def failure_reason(status: int) -> str:
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return "client_error"


DETAIL_CHARS = 200  # what a log line or an error message shows of a server's detail


MAX_ERROR_BODY = 64 * 1024  # what is read of an error answer to find its detail


MAX_PAGE_TOKEN = 8192  # a longer page token is not an offset or a cursor but an attack


# The statuses the API documents or the retry rules name keep their own value of the
# ``code`` label; any other is counted by its class, so a server cannot grow the label.
_CODE_LABELS = {
    code: str(code)
    for code in (200, 400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504)
}


def code_label(status: int) -> str:
    """The ``code`` label of ``llamacloud_api_requests_total``: one of a fixed set."""
    label = _CODE_LABELS.get(status)
    if label is not None:
        return label
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def error_detail(body: bytes, reason_phrase: str) -> str:
    """The server's ``detail``, one line, every secret blanked, then cut short.

    Blanking comes first: cutting first could leave the start of an echoed key in the text,
    too short to be recognised as one. Anything that cannot be read becomes a fixed phrase.
    """
    detail: Any = None
    try:
        parsed = _loads(body)
        detail = parsed.get("detail") if isinstance(parsed, dict) else None
    except Exception:
        detail = None
    if detail is None:
        text = reason_phrase
    elif isinstance(detail, str):
        text = detail
    else:
        try:
            text = json.dumps(detail)
        except Exception:  # nested too deep to show (RecursionError)
            text = "(a detail too deeply nested to show)"
    return redact(" ".join(text.split()))[:DETAIL_CHARS]


def parse_body(body: bytes) -> tuple[Any, bool]:
    """The JSON of a page, and whether it took the standard library's parser.

    orjson rejects what the standard library accepts: an unpaired surrogate in a string, an
    integer too large for a float, NaN. Those are bad *items*, to be skipped and counted, not
    a bad page; the slower parser reads such a page and the items are then checked.
    """
    try:
        return _loads(body), False
    except _DECODE_ERRORS:
        pass
    try:
        return json.loads(body), True
    except (ValueError, RecursionError):
        raise PollError("invalid_response", "response body is not JSON") from None


def checked_page(raw: bytes, page: int) -> tuple[list[Any], str | None]:
    """A page body's items and next page token, or PollError for a body of the wrong shape."""
    body, lenient = parse_body(raw)
    if not isinstance(body, dict):
        raise PollError("invalid_response", f"page {page} is not a JSON object")
    items = body.get("items")
    if not isinstance(items, list):
        raise PollError("invalid_response", f"page {page} has no items list")
    token = body.get("next_page_token")
    if token is not None and not isinstance(token, str):
        raise PollError("invalid_response", f"page {page} has a non-string page token")
    if token and (len(token) > MAX_PAGE_TOKEN or not is_text(token)):
        raise PollError(
            "invalid_response",
            f"page {page} has a page token longer than {MAX_PAGE_TOKEN} characters "
            "or not valid text",
        )
    return (_clean_items(items) if lenient else items), token or None


def _clean_items(items: list[Any]) -> list[Any]:
    """Items a page parsed by the standard library may hold that nothing downstream can
    store (a session id with an unpaired surrogate) become ``None``: skipped, counted."""
    return [
        None
        if type(item) is dict
        and isinstance(item.get("session_id"), str)
        and not is_text(item["session_id"])
        else item
        for item in items
    ]
