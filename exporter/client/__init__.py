"""LlamaCloud over httpx: listings page by page, retries as the SDK does them, a deadline
per request and bounded bodies, over one pool of connections.

By job: :mod:`.api` (the client), :mod:`.body` (what an answer may be, and the reason words
of failed polls), :mod:`.deadline` (the watchdog that ends requests past their deadline).
"""

from __future__ import annotations

from .api import ApiClient, Stopped
from .body import PollError

__all__ = [
    "ApiClient",
    "PollError",
    "Stopped",
]
