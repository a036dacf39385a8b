"""The settings of discovery: which organisation's projects to list, how often, which names."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..patterns import Pattern, compile_pattern
from .project import ProjectConfig

DEFAULT_INTERVAL_SECONDS = 600.0
EVERYTHING = compile_pattern("")


@dataclass(frozen=True)
class DiscoveryConfig:
    # What a discovered project takes from the ``llamacloud`` section: base URL, key (also the
    # one that lists the projects), page size and listing mode.
    template: ProjectConfig = field(repr=False)
    organization_id: str = ""
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    include: Pattern = EVERYTHING
    exclude: Pattern | None = None

    def wants(self, name: str) -> bool:
        """``include`` matches somewhere in the name, and ``exclude`` does not."""
        return self.include.search(name) and not (
            self.exclude is not None and self.exclude.search(name)
        )
