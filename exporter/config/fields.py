"""The building blocks of the config schemas: mappings that refuse unknown keys, values checked
in the words users read, and every problem named by its key path.

Pydantic walks the file (every section, list item and key, all problems at once); what a user
reads is ours. Each check raises a :func:`problem` in the phrase the docs use, and
:func:`messages` turns a validation error into ``projects[1].id: required`` lines. Pydantic's
own wording never reaches a user (it can quote the input: a key), nor does its lax mode:
``True`` is not a count and ``"100"`` is not a number.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..patterns import Pattern, PatternError, compile_pattern

if TYPE_CHECKING:
    from pydantic import ModelWrapValidatorHandler, ValidatorFunctionWrapHandler
    from typing_extensions import Self

Loc = tuple[str | int, ...]
Found = list[tuple[Loc, str]]


@dataclass
class Reading:
    """What validation reads with: the directory relative file names start from, and every
    key value met (so that no problem quotes one, see :func:`exporter.config.secret.redact`)."""

    base_dir: Path | None = None
    secrets: list[str] = field(default_factory=list)


def reading(info: ValidationInfo) -> Reading:
    return info.context if isinstance(info.context, Reading) else Reading()


def printable(text: str) -> str:
    """``text`` with an unpaired surrogate shown escaped (pydantic would mangle it)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def problem(message: str) -> PydanticCustomError:
    """What is wrong with a value, in a user's words; raise it from a check."""
    return PydanticCustomError("config", printable(message))


def located(found: Found) -> ValidationError:
    """Problems at keys below the value being checked (``(("alice",), "not a bcrypt hash")``),
    to raise from a check: pydantic puts the value's own path in front."""
    return ValidationError.from_exception_data(
        "config", [{"type": problem(message), "loc": loc, "input": None} for loc, message in found]
    )


def found_in(exc: ValidationError) -> Found:
    return [(e["loc"], e["msg"]) for e in exc.errors(include_url=False, include_context=False)]


def key_path(loc: Loc) -> str:
    """``("projects", 1, "id")`` as ``projects[1].id``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path


def messages(exc: ValidationError, where: str) -> list[str]:
    """A line a problem: ``projects[1].id: required``; ``where`` names a problem of the whole
    (``config: ...``)."""
    return [f"{key_path(loc) or where}: {message}" for loc, message in found_in(exc)]


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for a near miss (the same word in another case included)."""
    by_case = {k.lower(): k for k in known}
    if key.lower() in by_case:
        match: str | None = by_case[key.lower()]
    else:
        close = difflib.get_close_matches(key, sorted(by_case.values()), n=1, cutoff=0.75)
        match = close[0] if close else None
    return f" (did you mean {match}?)" if match else ""


class Schema(BaseModel):
    """A mapping in a config file: its keys are its fields, any other is refused with a
    hint, and :meth:`together` checks what one key cannot say alone."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, arbitrary_types_allowed=True
    )

    NOT_A_MAPPING: ClassVar[str] = "must be a mapping"
    EMPTY_IF_NONE: ClassVar[bool] = True  # ``section:`` with nothing under it is no settings
    # Keys that say one thing two ways (a key inline, or the file holding it): one at most.
    EITHER: ClassVar[tuple[tuple[str, str], ...]] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _in_our_words(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if data is None and cls.EMPTY_IF_NONE:
            data = {}
        if not isinstance(data, dict):
            raise problem(cls.NOT_A_MAPPING)
        # Unknown keys are said first, with a hint, and left out: the rest is still checked.
        given, known = data, cls.model_fields
        found: Found = [
            ((printable(str(k)),), cls._unknown(str(k))) for k in data if k not in known
        ]
        data = {k: v for k, v in data.items() if k in known}
        checked = len(data)
        for one, other in cls.EITHER:
            if is_set(data.get(one)) and is_set(data.get(other)):
                found.append(((other,), f"set {one} or {other}, not both"))
                data = {k: v for k, v in data.items() if k not in (one, other)}
        parsed: Self | None = None
        try:
            parsed = handler(data)
        except ValidationError as exc:
            found += found_in(exc)
        found += cls.together(given, None if len(data) < checked else parsed)
        if found:
            raise located(found)
        assert parsed is not None  # no problem: the handler returned
        return parsed

    @classmethod
    def _unknown(cls, key: str) -> str:
        return f"unknown key{did_you_mean(key, cls.model_fields)}"

    @classmethod
    def together(cls, raw: dict[str, Any], parsed: Self | None) -> Found:
        """Problems of keys taken together, from the mapping as given, unknown keys included
        (``parsed`` is None when a key has a problem of its own)."""
        return []


def is_set(value: Any) -> bool:
    """Whether a key says something (``key:`` or ``key: ""`` does not)."""
    return value is not None and value != ""


# ------------------------------------------------------------------------- value checks


# A number written with a unit ("30s", "5m", "64MiB", "10 seconds"): the value is quoted back,
# as nothing this short and plain can be a key.
_WITH_UNIT = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:[A-Za-z]{1,12}|%)\s*")


def with_unit(value: Any, what: str) -> None:
    """Raise "must be WHAT, without a unit (got '30s')" when ``value`` is a number with a unit."""
    if isinstance(value, str) and len(value) <= 32 and _WITH_UNIT.fullmatch(value):
        raise problem(f"must be {what}, without a unit (got {value.strip()!r})")


def whole(low: int, high: int, unit: str = "") -> PlainValidator:
    """A whole number from ``low`` to ``high``; ``unit`` (``"bytes"``) names what it counts."""
    what = f"a whole number of {unit}" if unit else "a whole number"

    def whole_number(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            with_unit(value, what)
            raise problem("must be a whole number")
        if not low <= value <= high:
            raise problem(f"must be between {low} and {high}")
        return value

    return PlainValidator(whole_number)


def number(high: float, low: float | None = None, unit: str = "seconds") -> PlainValidator:
    """A number of ``unit`` from ``low`` to ``high``; without ``low``, greater than 0. An int
    stays as it is until it is in bounds (``10**400`` compares, where float() would overflow)."""

    def check_number(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            with_unit(value, f"a number of {unit}")
            raise problem("must be a number")
        if low is None and not 0 < value <= high:
            raise problem(f"must be greater than 0 and at most {high:g}")
        if low is not None and not low <= value <= high:
            raise problem(f"must be between {low:g} and {high:g}")
        return float(value)

    return PlainValidator(check_number)


def one_of(choices: tuple[str, ...]) -> PlainValidator:
    def choice(value: Any) -> str:
        if value not in choices:
            raise problem(f"must be one of {', '.join(choices)}")
        return str(value)

    return PlainValidator(choice)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise problem("must be a string")
    return value


text = PlainValidator(_text)  # an optional string ("" when absent)


def pattern(value: str) -> Pattern:
    """A regular expression, or the problem RE2 has with it."""
    try:
        return compile_pattern(value)
    except PatternError as exc:
        raise problem(f"invalid regular expression (RE2 syntax, as in Prometheus): {exc}") from None


def entries(not_a_mapping: str, entry: Callable[[Any, Any], Any]) -> PlainValidator:
    """A mapping (``None``: empty) of entries each checked by ``entry(key, value)``: it
    returns the value to keep (None: leave the entry out), or raises a problem."""

    def check_entries(value: Any) -> dict[Any, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise problem(not_a_mapping)
        kept: dict[Any, Any] = {}
        found: Found = []
        for key, item in value.items():
            try:
                checked = entry(key, item)
            except PydanticCustomError as exc:
                found.append(((printable(str(key)),), exc.message()))
            else:
                if checked is not None:
                    kept[key] = checked
        if found:
            raise located(found)
        return kept

    return PlainValidator(check_entries)


def listed(
    not_a_list: str, *, unique: str = "", duplicate: str = "", most: tuple[int, str] | None = None
) -> WrapValidator:
    """A list (``None`` stays None): ``not_a_list`` if it is something else, at most
    ``most[0]`` items, and no two items with the same ``unique`` key (``duplicate`` says so,
    with the value in place of ``{}``): said even when other items have problems."""

    def check_list(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is None:
            return None
        if not isinstance(value, list):
            raise problem(not_a_list)
        found: Found = [((), most[1])] if most and len(value) > most[0] else []
        parsed = None
        try:
            parsed = handler(value)
        except ValidationError as exc:
            found += found_in(exc)
        failed = {loc[:2] for loc, _ in found}
        seen: set[str] = set()
        for i, item in enumerate(value):
            key = item.get(unique) if unique and isinstance(item, dict) else None
            if not isinstance(key, str) or not key or (i, unique) in failed:
                continue
            if key in seen:
                found.append(((i, unique), duplicate.format(key)))
            seen.add(key)
        if found:
            raise located(found)
        return parsed

    return WrapValidator(check_list)
