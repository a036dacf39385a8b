"""Discovery: the projects an organisation lists, and which of all projects a replica polls.

Pure: the ``discovery`` config section, reading ``GET /api/v2/projects`` items into projects,
and the project list of a replica (static entries win, then its shard's share). The loop
that lists and applies lives in :mod:`exporter.targets`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .patterns import Pattern, compile_pattern, parse_pattern
from .sharding import UNSHARDED, Shard
from .text import is_text, repaired

if TYPE_CHECKING:
    from .config import ProjectConfig

DISCOVERY_KEYS = {"organization_id", "interval_seconds", "include", "exclude"}
DEFAULT_INTERVAL_SECONDS = 600.0
MIN_INTERVAL_SECONDS = 1.0
MAX_INTERVAL_SECONDS = 86_400.0
PAGE_SIZE = 100
# A listing longer than this is not an organisation's projects but a broken API: the
# discovery fails (and the last list stays) before its memory grows without bound.
MAX_PROJECTS = 100_000
MAX_PAGES = 2 * MAX_PROJECTS // PAGE_SIZE
MAX_NAME_LENGTH = 1024  # a longer project name is not a name: the item is skipped
MAX_ID_LENGTH = 256  # project ids are UUIDs; a longer one would be a label on every series
# A project leaves (series, counters, saved state) only when this many successful listings in a
# row have not listed it: at the default interval, 20 to 30 minutes.
ABSENT_LISTINGS = 3
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


def read_projects(
    items: Iterable[Any], discovery: DiscoveryConfig, seen: set[str] | None = None
) -> tuple[list[ProjectConfig], int]:
    """The listed projects that ``include``/``exclude`` keep, and how many items were skipped
    for a bad shape (an id or name that is not a non-empty string, a repeated id, an
    organisation id that is not Unicode) or shown repaired (a name with an unpaired surrogate).
    ``seen``: the ids of the pages before, for a listing read page by page."""
    out: list[ProjectConfig] = []
    seen = set() if seen is None else seen
    invalid = 0
    for item in items:
        pid = item.get("id") if type(item) is dict else None
        name = item.get("name") if type(item) is dict else None
        org = item.get("organization_id") if type(item) is dict else None
        if (
            type(pid) is not str
            or not pid
            or not pid.isprintable()
            or len(pid) > MAX_ID_LENGTH
            or pid in seen
            or type(name) is not str
            or len(name) > MAX_NAME_LENGTH
            or (org is not None and (type(org) is not str or not is_text(org)))
        ):
            invalid += 1
            continue
        seen.add(pid)
        if not is_text(name):  # a name is only shown: U+FFFD for what UTF-8 cannot carry
            name = repaired(name)
            invalid += 1
        if discovery.wants(name):
            out.append(
                replace(
                    discovery.template,
                    id=pid,
                    name=name or pid,
                    organization_id=org or discovery.organization_id,
                )
            )
    return out, invalid


def replica_projects(
    static: Sequence[ProjectConfig],
    discovered: Sequence[ProjectConfig] | None,
    shard: Shard = UNSHARDED,
) -> tuple[ProjectConfig, ...]:
    """What one replica polls: the static projects, then the discovered ones the config does
    not name (a static entry wins, so its own key and settings apply), each kept only by the
    shard that owns it."""
    named = {p.id for p in static}
    merged = [*static, *(p for p in discovered or () if p.id not in named)]
    if shard.total == 1:
        return tuple(merged)
    return tuple(p for p in merged if shard.owns(p.id))
