"""The ``discovery`` section: which organisation's projects to list, how often, which names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import PlainValidator

from ..patterns import Pattern, compile_pattern
from .fields import Schema, between, pattern, problem, text
from .project import ProjectConfig

DEFAULT_INTERVAL_SECONDS = 600.0


MIN_INTERVAL_SECONDS = 1.0


MAX_INTERVAL_SECONDS = 86_400.0


_EVERYTHING = compile_pattern("")


@dataclass(frozen=True)
class DiscoveryConfig:
    # What a discovered project takes from the ``llamacloud`` section: base URL, key (also the
    # one that lists the projects), page size and listing mode.
    template: ProjectConfig = field(repr=False)
    organization_id: str = ""
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    include: Pattern = _EVERYTHING
    exclude: Pattern | None = None

    def wants(self, name: str) -> bool:
        """``include`` matches somewhere in the name, and ``exclude`` does not."""
        return self.include.search(name) and not (
            self.exclude is not None and self.exclude.search(name)
        )


def _filter(value: Any) -> Pattern | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise problem("must be a regular expression (a string)")
    return pattern(value)


class DiscoverySection(Schema):
    organization_id: Annotated[str, text] = ""
    interval_seconds: Annotated[float, between(MIN_INTERVAL_SECONDS, MAX_INTERVAL_SECONDS)] = (
        DEFAULT_INTERVAL_SECONDS
    )
    include: Annotated[Pattern | None, PlainValidator(_filter)] = None
    exclude: Annotated[Pattern | None, PlainValidator(_filter)] = None

    def settings(self, template: ProjectConfig) -> DiscoveryConfig:
        """The settings, discovered projects taking ``template``'s key, URL and paging."""
        include = self.include or _EVERYTHING
        return DiscoveryConfig(
            template, self.organization_id, self.interval_seconds, include, self.exclude
        )
