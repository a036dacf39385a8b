"""What a scrape renders: the collector over the store, and its text formats cached by project."""

from __future__ import annotations

from .collector import StoreCollector
from .exposition import TextExposition

__all__ = [
    "StoreCollector",
    "TextExposition",
]
