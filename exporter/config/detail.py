"""The ``detail`` section: how many indexes a project shows by name, and the error classes."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, PlainValidator

from ..aggregate.indexes import DEFAULT_MAX_INDEX_SERIES, RESERVED, Detail, ErrorClass
from ..patterns import Pattern
from .fields import Schema, listed, pattern, problem, whole

MAX_INDEX_SERIES = 1000


MAX_ERROR_CLASSES = 50


_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def _class_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise problem("must be a lowercase word (a-z, 0-9, _; starting with a letter)")
    if value in RESERVED:
        raise problem(f"{value} is reserved")
    return value


def _match(value: Any) -> Pattern:
    if not isinstance(value, str) or not value:
        raise problem("required (a regular expression)")
    return pattern(value)


class ErrorClassEntry(Schema):
    NOT_A_MAPPING = "must be a mapping with name and match"
    EMPTY_IF_NONE = False

    name: Annotated[str, PlainValidator(_class_name)] = Field("", validate_default=True)
    match: Annotated[Pattern, PlainValidator(_match)] = Field("", validate_default=True)


class DetailSection(Schema):
    max_index_series: Annotated[int, whole(0, MAX_INDEX_SERIES)] = DEFAULT_MAX_INDEX_SERIES
    # Absent: the shipped classes; empty (or null): none, every error is "other".
    error_classes: Annotated[
        list[ErrorClassEntry] | None,
        listed(
            "must be a list of {name, match}",
            unique="name",
            duplicate="duplicate class {}",
            most=(MAX_ERROR_CLASSES, f"at most {MAX_ERROR_CLASSES} classes"),
        ),
    ] = None

    def settings(self) -> Detail:
        if "error_classes" not in self.model_fields_set:
            return Detail(self.max_index_series)
        classes = self.error_classes or ()
        return Detail(self.max_index_series, tuple(ErrorClass(c.name, c.match) for c in classes))
