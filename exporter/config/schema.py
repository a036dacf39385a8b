"""The schema of ``config.yaml``: every key with its type, bounds and default, declared once.

:class:`ConfigFile` is the whole file. Each check says what is wrong in the words users read
(:mod:`.fields`); :mod:`.load` validates the expanded file against this and builds the
frozen :class:`~exporter.config.settings.Config`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import httpx
from pydantic import Field, PlainValidator, ValidationInfo, field_validator

from ..aggregate.indexes import DEFAULT_MAX_INDEX_SERIES, RESERVED, Detail, ErrorClass
from ..patterns import Pattern
from .discovery import DEFAULT_INTERVAL_SECONDS, EVERYTHING, DiscoveryConfig
from .fields import (
    Schema,
    listed,
    number,
    one_of,
    pattern,
    problem,
    reading,
    text,
    whole,
    with_unit,
)
from .files import MAX_KEY_FILE_BYTES, FileProblem, read_bounded
from .project import LISTING_MODES, RUN_MODES, ProjectConfig
from .secret import Secret
from .settings import DEFAULT_LISTEN_ADDRESS, DEFAULT_MAX_RESPONSE_BYTES, listen_address_problem
from .sharding import MAX_SHARDS, Shard

MAX_TIMEOUT_SECONDS = 600.0
MAX_POLL_INTERVAL_SECONDS = 86_400.0
MAX_REQUESTS_PER_SECOND = 10_000.0
MAX_INDEX_SERIES = 1000
MAX_ERROR_CLASSES = 50
MIN_DISCOVERY_INTERVAL_SECONDS = 1.0
MAX_DISCOVERY_INTERVAL_SECONDS = 86_400.0
_CLASS_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")

BAD_KEY = "an API key is printable ASCII without spaces (LlamaCloud keys look like llx-...)"


def key_ok(key: str) -> bool:
    """Whether a key can go in a request header as it is."""
    return key.isascii() and key.isprintable() and not any(c.isspace() for c in key)


def base_url(value: Any) -> str | None:
    """An API's URL without a trailing slash (None when unset); no problem quotes it."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        raise problem("must be an http:// or https:// URL")
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise problem("must be an http:// or https:// URL") from None
    if url.userinfo:
        raise problem("must not hold a user name or password (use api_key)")
    if url.query or url.fragment or not url.host:
        raise problem("must be a URL with a host and no query or fragment")
    return value.rstrip("/")


def _api_key(value: Any) -> Secret | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise problem("must be a string")
    if not key_ok(value.strip()):
        raise problem(BAD_KEY)
    return Secret(value.strip())


def _looks_like_key(value: str) -> bool:
    """A value of ``api_key_file`` that is more likely a key pasted there than a path."""
    return value.startswith("llx-") or (len(value) >= 20 and not any(c in value for c in "/.\\"))


def _api_key_file(value: Any, info: ValidationInfo) -> Secret | None:
    """The key in the file named (relative to the config's directory). A problem names the
    file as it was looked for (a path is no secret), never its contents; and not a value that
    looks like a key pasted here by mistake, which must not be printed back as a name."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise problem("must be a file path")
    path, base_dir = Path(value), reading(info).base_dir
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    named, hint = f"the key file {path}", ""
    if _looks_like_key(value):
        named = "the key file"
        hint = " (the value looks like an API key, not a path: set api_key instead)"
    try:
        data = read_bounded(path, MAX_KEY_FILE_BYTES)
    except FileProblem as exc:
        raise problem(f"cannot read {named}: {exc}{hint}") from None
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise problem(f"{named} is not UTF-8 text") from None
    reading(info).secrets.append(key)
    if not key:
        raise problem(f"{named} is empty")
    if not key_ok(key):
        raise problem(BAD_KEY)
    return Secret(key)


def _rate(value: Any) -> float:
    if value == 0:
        return 0.0  # no limit
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        with_unit(value, "a number of requests per second")
        value = -1
    if not 0 < value <= MAX_REQUESTS_PER_SECOND:
        limit = f"{MAX_REQUESTS_PER_SECOND:g}"
        raise problem(f"must be 0 (no limit) or a number greater than 0 and at most {limit}")
    return float(value)


def _listen_address(value: Any) -> str:
    found = listen_address_problem(value)
    if found:
        raise problem(found)
    return str(value)


def _state_path(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise problem("must be a file path")
    return value


def _project_id(value: Any) -> str:
    if value is None or value == "":
        raise problem("required")
    if not isinstance(value, str):
        raise problem("must be a string")
    return value


_SHARE = "(a share of runs: 0.01 is 1 %)"


def _error_ratio(value: Any) -> float | None:
    """The share of a project's runs allowed to fail."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        with_unit(value, f"a number greater than 0 and less than 1 {_SHARE}")
        raise problem(f"must be a number greater than 0 and less than 1 {_SHARE}")
    if not 0 < value < 1:  # NaN too
        raise problem(f"must be greater than 0 and less than 1 {_SHARE}")
    return float(value)


ApiKey = Annotated[Secret | None, PlainValidator(_api_key)]
ApiKeyFile = Annotated[Secret | None, PlainValidator(_api_key_file)]
BaseUrl = Annotated[str | None, PlainValidator(base_url)]
PageSize = whole(1, 1000)
Listing = one_of(LISTING_MODES)
Runs = one_of(RUN_MODES)


class _Api(Schema):
    """Where an API is and the key to it: in ``llamacloud`` for all, or for one project."""

    EITHER = (("api_key", "api_key_file"),)

    base_url: BaseUrl = None
    api_key: ApiKey = None
    api_key_file: ApiKeyFile = None


class ObjectivesSection(Schema):
    """What a project's runs are held to; the burn-rate alerts divide by it."""

    error_ratio: Annotated[float | None, PlainValidator(_error_ratio)] = None


class LlamaCloudSection(_Api):
    """The API and what every project takes unless it says otherwise."""

    page_size: Annotated[int, PageSize] = 100
    timeout_seconds: Annotated[float, number(MAX_TIMEOUT_SECONDS)] = 30.0
    max_retries: Annotated[int, whole(0, 100)] = 5
    max_pages: Annotated[int, whole(1, 10**9)] = 10000
    max_response_bytes: Annotated[int, whole(1024, 2**30, "bytes")] = DEFAULT_MAX_RESPONSE_BYTES
    max_requests_per_second: Annotated[float, PlainValidator(_rate)] = 0.0  # 0: no limit
    listing: Annotated[str, Listing] = "auto"
    full_listing_every: Annotated[int, whole(1, 1_000_000)] = 10
    incremental_overlap_seconds: Annotated[float, number(MAX_POLL_INTERVAL_SECONDS, 0)] = 300.0
    runs: Annotated[str, Runs] = "exact"
    max_session_reads_per_poll: Annotated[int, whole(0, 100_000)] = 100  # 0: no reads
    # Every project's, unless it sets its own (``objectives: null`` or ``{}``: none).
    objectives: ObjectivesSection = ObjectivesSection()


class ProjectEntry(_Api):
    """One item of ``projects``: unset keys come from ``llamacloud``."""

    NOT_A_MAPPING = "must be a mapping with at least an id"
    EMPTY_IF_NONE = False

    id: Annotated[str, PlainValidator(_project_id)] = Field("", validate_default=True)
    name: Annotated[str, text] = ""
    organization_id: Annotated[str, text] = ""
    page_size: Annotated[int | None, PageSize] = None
    listing: Annotated[str | None, Listing] = None
    runs: Annotated[str | None, Runs] = None
    # Set (null and {} included), it replaces llamacloud.objectives for this project.
    objectives: ObjectivesSection = ObjectivesSection()

    def error_ratio_objective(self, default: float | None) -> float | None:
        return self.objectives.error_ratio if "objectives" in self.model_fields_set else default


class WebSection(Schema):
    listen_address: Annotated[str, PlainValidator(_listen_address)] = DEFAULT_LISTEN_ADDRESS


class StateSection(Schema):
    path: Annotated[str | None, PlainValidator(_state_path)] = None


class ShardingSection(Schema):
    total: Annotated[int, whole(1, MAX_SHARDS)] = 1
    index: Annotated[int, whole(0, MAX_SHARDS - 1)] = 0

    @field_validator("index")
    @classmethod
    def _below_total(cls, index: int, info: ValidationInfo) -> int:
        total = info.data.get("total")
        if total is not None and index >= total:
            raise problem(f"must be below sharding.total ({total})")
        return index

    def shard(self) -> Shard:
        return Shard(self.index, self.total)


def _class_name(value: Any) -> str:
    if not isinstance(value, str) or not _CLASS_NAME.fullmatch(value):
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


def _filter(value: Any) -> Pattern | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise problem("must be a regular expression (a string)")
    return pattern(value)


class DiscoverySection(Schema):
    organization_id: Annotated[str, text] = ""
    interval_seconds: Annotated[
        float, number(MAX_DISCOVERY_INTERVAL_SECONDS, MIN_DISCOVERY_INTERVAL_SECONDS)
    ] = DEFAULT_INTERVAL_SECONDS
    include: Annotated[Pattern | None, PlainValidator(_filter)] = None
    exclude: Annotated[Pattern | None, PlainValidator(_filter)] = None

    def settings(self, template: ProjectConfig) -> DiscoveryConfig:
        """The settings, discovered projects taking ``template``'s key, URL and paging."""
        include = self.include or EVERYTHING
        return DiscoveryConfig(
            template, self.organization_id, self.interval_seconds, include, self.exclude
        )


class ConfigFile(Schema):
    """The whole file."""

    llamacloud: LlamaCloudSection = LlamaCloudSection()
    poll_interval_seconds: Annotated[float, number(MAX_POLL_INTERVAL_SECONDS)] = 60.0
    max_concurrency: Annotated[int, whole(1, 1000)] = 4
    web: WebSection = WebSection()
    state: StateSection = StateSection()
    detail: DetailSection = DetailSection()
    discovery: DiscoverySection | None = None  # declared before projects: they need it
    sharding: ShardingSection = ShardingSection()
    projects: Annotated[
        list[ProjectEntry] | None,
        listed(
            "must be a list with at least one project",
            unique="id",
            duplicate="duplicate project id {}",
        ),
    ] = Field(None, validate_default=True)

    @field_validator("projects")
    @classmethod
    def _projects_or_discovery(
        cls, projects: list[ProjectEntry] | None, info: ValidationInfo
    ) -> list[ProjectEntry] | None:
        # Not when discovery has a problem of its own: it is meant to be there.
        if projects or info.data.get("discovery", True) is not None:
            return projects
        if projects is None:
            raise problem("required (a list with at least one project, or discovery)")
        raise problem("must be a list with at least one project")
