"""LlamaCloud over HTTP: listings page by page, retries as the SDK does them, a deadline
per request and bounded bodies, over one pool of connections.

By job: :mod:`.api` (the client), :mod:`.body` (what an answer may be, and the reason words
of failed polls), :mod:`.deadline` (the watchdog that ends requests past their deadline),
:mod:`.wire` (the standard library's connections the pool lends; httpx's when a proxy is set).
"""

from __future__ import annotations

from .api import ApiClient, Stopped
from .body import PollError

__all__ = [
    "ApiClient",
    "PollError",
    "Stopped",
]
