"""The ``discovery`` section: which organisation's projects to list, how often, which names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..patterns import Pattern, compile_pattern, parse_pattern
from .project import ProjectConfig

DISCOVERY_KEYS = {"organization_id", "interval_seconds", "include", "exclude"}


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


def parse_discovery(
    raw: Mapping[str, Any], template: ProjectConfig, problems: list[str]
) -> DiscoveryConfig:
    """The ``discovery`` section (a mapping with known keys), problems by key path."""
    org = raw.get("organization_id")
    if org is None:
        org = ""
    elif not isinstance(org, str):
        problems.append("discovery.organization_id: must be a string")
        org = ""
    interval = raw.get("interval_seconds", DEFAULT_INTERVAL_SECONDS)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        problems.append("discovery.interval_seconds: must be a number")
        interval = DEFAULT_INTERVAL_SECONDS
    elif not MIN_INTERVAL_SECONDS <= interval <= MAX_INTERVAL_SECONDS:
        problems.append(
            f"discovery.interval_seconds: must be between {MIN_INTERVAL_SECONDS:g} and "
            f"{MAX_INTERVAL_SECONDS:g}"
        )
        interval = DEFAULT_INTERVAL_SECONDS
    include = _pattern(raw, "include", problems) or _EVERYTHING
    exclude = _pattern(raw, "exclude", problems)
    return DiscoveryConfig(template, org, float(interval), include, exclude)


def _pattern(raw: Mapping[str, Any], key: str, problems: list[str]) -> Pattern | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        problems.append(f"discovery.{key}: must be a regular expression (a string)")
        return None
    return parse_pattern(value, f"discovery.{key}", problems)
