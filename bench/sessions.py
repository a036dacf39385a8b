"""Synthetic API-shaped sessions, made a page at a time, for memory and scrape.

Neither needs a server: memory feeds a tracker page by page, scrape fills a store with them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

_TITLES = (
    "What were the main findings in Q3?",
    "Summarize the onboarding handbook",
    "Compare the 2024 and 2025 pricing tables",
    "Which contracts renew in March?",
    None,
)
_ERRORS = (
    "Context length exceeded",
    "Rate limit exceeded by the model provider",
    "Index not found",
)
_INDEXES = ("idx-5f0c3a9e12ab", "idx-0b7d41c2e9f3", "idx-93aa0e6c7d15")


def synthetic_pages(
    count: int, *, page_size: int = 100, seed: int = 0, changed_share: float = 0.0
) -> Iterator[list[dict[str, Any]]]:
    """Pages of API-shaped session items, made on the fly so only one page is alive at a time.

    The same ``seed`` gives the same sessions in the same order; ``changed_share`` of them get a
    different most recent run (as a re-run between two polls would), the rest are identical.
    """
    ids = random.Random(seed).getrandbits
    rng = random.Random(seed + 1)
    rand = rng.random
    change = random.Random(seed + 2).random
    done = 0
    while done < count:
        page: list[dict[str, Any]] = []
        for _ in range(min(page_size, count - done)):
            sid = f"ses-{ids(96):024x}"
            stamp = (
                f"2025-12-{1 + int(rand() * 28):02d}T{int(rand() * 24):02d}:"
                f"{int(rand() * 60):02d}:{int(rand() * 60):02d}.{int(rand() * 1e6):06d}"
            )
            pick = rand()
            job: dict[str, Any] | None = None
            if pick >= 0.15:
                failed = pick > 0.9
                job = {
                    "duration_ms": round(500 + rand() * 20000, 3),
                    "error": _ERRORS[int(rand() * 3)] if failed else None,
                    "export_config_ids": [],
                    "is_error": failed,
                    "total_input_tokens": int(100 + rand() * 5000),
                    "total_output_tokens": int(20 + rand() * 800),
                    "turns": 1 + int(rand() * 12),
                }
                if changed_share and change() < changed_share:
                    job["turns"] += 1
                    job["total_output_tokens"] += 37
            page.append(
                {
                    "session_id": sid,
                    "last_updated_at": stamp,
                    "shared_access": "read_only" if pick < 0.1 else "query",
                    "generated_title": _TITLES[int(rand() * len(_TITLES))] if job else None,
                    "index_ids": None if pick < 0.3 else [_INDEXES[int(rand() * 3)]],
                    "job_metadata": job,
                }
            )
        done += len(page)
        yield page
