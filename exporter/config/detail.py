"""The ``detail`` section: how many indexes a project shows by name, and the error classes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..aggregate.indexes import DEFAULT_MAX_INDEX_SERIES, RESERVED, Detail, ErrorClass
from ..patterns import parse_pattern
from .files import unknown_keys, whole_number

MAX_INDEX_SERIES = 1000


MAX_ERROR_CLASSES = 50


_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


DETAIL_KEYS = {"max_index_series", "error_classes"}


_CLASS_KEYS = {"name", "match"}


def parse_detail(raw: Mapping[str, Any], problems: list[str]) -> Detail:
    """The ``detail`` section (already a mapping with known keys), problems by key path."""
    default = Detail()
    limit = whole_number(
        raw, "max_index_series", "detail.", DEFAULT_MAX_INDEX_SERIES, 0, MAX_INDEX_SERIES, problems
    )
    if "error_classes" not in raw:
        return Detail(limit, default.error_classes)
    value = raw["error_classes"]
    if value is None:
        value = []
    if not isinstance(value, list):
        problems.append("detail.error_classes: must be a list of {name, match}")
        return Detail(limit)
    if len(value) > MAX_ERROR_CLASSES:
        problems.append(f"detail.error_classes: at most {MAX_ERROR_CLASSES} classes")
    classes: list[ErrorClass] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        where = f"detail.error_classes[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping with name and match")
            continue
        unknown_keys(item, _CLASS_KEYS, where + ".", problems)
        name, match = item.get("name"), item.get("match")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(
                f"{where}.name: must be a lowercase word (a-z, 0-9, _; starting with a letter)"
            )
            name = None
        elif name in RESERVED:
            problems.append(f"{where}.name: {name} is reserved")
            name = None
        elif name in seen:
            problems.append(f"{where}.name: duplicate class {name}")
            name = None
        if not isinstance(match, str) or not match:
            problems.append(f"{where}.match: required (a regular expression)")
            continue
        pattern = parse_pattern(match, f"{where}.match", problems)
        if pattern is None:
            continue
        if name is not None:
            seen.add(name)
            classes.append(ErrorClass(name, pattern))
    return Detail(limit, tuple(classes))
