"""Paging: opaque page tokens bound to their listing, ``page_size`` as FastAPI parses it, and
pages rendered as the API renders them."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from .server import _ApiError

DEFAULT_PAGE_SIZE = 50
# Rendered pages are kept up to this many bytes in total; a 200,000-session listing at
# page_size 100 needs roughly 70 MB, so a full benchmark pass is served from the cache.
PAGE_CACHE_BYTES = 128 * 1024 * 1024


def _encode_token(tag: str, kind: str, number: int) -> str:
    raw = f"{kind}.{tag}.{number}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_token(token: str, tag: str) -> tuple[str, int]:
    """Returns (kind, number) or raises a 400, as the real API does for a token it did not issue."""
    try:
        padded = token.encode("ascii") + b"=" * (-len(token) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
        kind, token_tag, number = text.split(".")
    except (UnicodeError, binascii.Error, ValueError):
        raise _ApiError(400, "Invalid page_token") from None
    if kind not in ("o", "e") or token_tag != tag or not (number.isascii() and number.isdigit()):
        raise _ApiError(400, "Invalid page_token")
    return kind, int(number)


def _page_size(raw: str | None, maximum: int) -> int:
    """Parses page_size like FastAPI would (422 on junk or < 1); values above the maximum clamp."""
    if raw is None:
        return min(DEFAULT_PAGE_SIZE, maximum)
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(
            422,
            [
                {
                    "type": "int_parsing",
                    "loc": ["query", "page_size"],
                    "msg": "Input should be a valid integer, unable to parse string as an integer",
                    "input": raw,
                }
            ],
        ) from None
    if value < 1:
        raise _ApiError(
            422,
            [
                {
                    "type": "greater_than_equal",
                    "loc": ["query", "page_size"],
                    "msg": "Input should be greater than or equal to 1",
                    "input": raw,
                    "ctx": {"ge": 1},
                }
            ],
        )
    return min(value, maximum)


def _render_page(items: Sequence[bytes], next_token: str | None) -> bytes:
    """``{"items":[...],"next_page_token":"..."}`` from encoded items; the last page omits the
    token."""
    parts = [b'{"items":[', b",".join(items), b"]"]
    if next_token is not None:
        parts.append(b',"next_page_token":"' + next_token.encode() + b'"')
    parts.append(b"}")
    return b"".join(parts)


def _offset_page(items: Sequence[bytes], tag: str, token: str | None, page_size: int) -> bytes:
    """The page of ``items`` that ``token`` (None: the first page) points at, with offset tokens
    bound to ``tag``; 400 for a token this listing did not issue. Past the end, a page is empty."""
    offset = 0
    if token is not None:
        kind, offset = _decode_token(token, tag)
        if kind != "o":
            raise _ApiError(400, "Invalid page_token")
    end = offset + page_size
    next_token = _encode_token(tag, "o", end) if end < len(items) else None
    return _render_page(items[offset:end], next_token)
