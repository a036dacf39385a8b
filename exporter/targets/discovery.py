"""Discovery's pure part: ``GET /api/v2/projects`` items read into projects, and the project
list of a replica (static entries win, then its shard's share).

The settings are :mod:`exporter.config.discovery`'s; the loop that lists and applies is
:mod:`exporter.targets.replica`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..config import UNSHARDED, Shard
from ..config.discovery import DiscoveryConfig
from ..text import is_text, repaired
from .sharding import owns

if TYPE_CHECKING:
    from ..config import ProjectConfig

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
    return tuple(p for p in merged if owns(shard, p.id))
