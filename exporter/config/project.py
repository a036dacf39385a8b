"""One project to poll: where it is, its key, how it is listed."""

from __future__ import annotations

from dataclasses import dataclass, field

from .secret import Secret

NA_BASE_URL = "https://api.cloud.llamaindex.ai"


EU_BASE_URL = "https://api.cloud.eu.llamaindex.ai"


LISTING_MODES = ("auto", "full")


# "exact": a changed session's history is read and every run in it counted; "latest": the
# listing's run only (a session that ran twice between two polls counts once).
RUN_MODES = ("exact", "latest")


@dataclass(frozen=True)
class ProjectConfig:
    id: str
    name: str
    organization_id: str
    base_url: str
    page_size: int
    api_key: Secret = field(repr=False)
    listing: str = "auto"  # "auto": incremental once the API shows newest-first; "full"
    runs: str = "exact"  # RUN_MODES
    # Where the key came from, for messages: "projects[0].api_key", "llamacloud.api_key_file",
    # "the LLAMA_CLOUD_API_KEY environment variable" (never the key).
    key_source: str = ""
    # objectives.error_ratio: the share of runs allowed to fail; None: no objective.
    error_ratio_objective: float | None = None
