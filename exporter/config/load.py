"""Configuration: read YAML once, validate every key, return frozen objects.

Every problem is collected with its key path (``projects[1].id: required``) so that
``--check-config`` can list them all at once instead of one per run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from ..text import is_text
from .detail import DETAIL_KEYS, parse_detail
from .discovery import DISCOVERY_KEYS, parse_discovery
from .files import (
    MAX_CONFIG_DEPTH,
    MAX_KEY_FILE_BYTES,
    FileProblem,
    YamlProblem,
    load_yaml,
    read_bounded,
    read_config_text,
    section,
    unknown_keys,
    whole_number,
)
from .project import LISTING_MODES, NA_BASE_URL, ProjectConfig
from .secret import Secret, redact
from .settings import (
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_MAX_RESPONSE_BYTES,
    Config,
    ConfigError,
    check_listen_address,
)
from .sharding import MAX_SHARDS, UNSHARDED, Shard

API_KEY_ENV = "LLAMA_CLOUD_API_KEY"
BASE_URL_ENV = "LLAMA_CLOUD_BASE_URL"

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

MAX_TIMEOUT_SECONDS = 600.0
MAX_POLL_INTERVAL_SECONDS = 86_400.0
MAX_REQUESTS_PER_SECOND = 10_000.0


_TOP_KEYS = {
    "llamacloud",
    "projects",
    "poll_interval_seconds",
    "max_concurrency",
    "web",
    "state",
    "detail",
    "discovery",
    "sharding",
}
_LLAMACLOUD_KEYS = {
    "base_url",
    "api_key",
    "api_key_file",
    "page_size",
    "timeout_seconds",
    "max_retries",
    "max_pages",
    "max_response_bytes",
    "max_requests_per_second",
    "listing",
    "full_listing_every",
    "incremental_overlap_seconds",
}
_PROJECT_KEYS = {
    "id",
    "name",
    "organization_id",
    "api_key",
    "api_key_file",
    "base_url",
    "page_size",
    "listing",
}
_WEB_KEYS = {"listen_address"}
_SHARDING_KEYS = {"index", "total"}
_STATE_KEYS = {"path"}


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand ``${VAR}`` references and validate a config file."""
    env = os.environ if env is None else env
    try:
        text = read_config_text(path)
    except FileProblem as exc:
        raise ConfigError([f"config: {exc}"]) from None
    try:
        raw = parse_yaml(text)
        return parse_config(raw, env, base_dir=Path(path).parent)
    except ConfigError as exc:
        # A YAML error may quote a bit of the file: blank anything that looks like a key.
        raise ConfigError([redact(p, _key_like(text)) for p in exc.problems]) from None


def parse_yaml(text: str) -> Any:
    """The YAML of a config, bounded (:func:`exporter.config.files.load_yaml`)."""
    try:
        return load_yaml(text)
    except YamlProblem as exc:
        raise ConfigError([f"config: {exc}"]) from None


_KEY_LIKE = re.compile(r"llx-[^\s'\"]+|api_key\s*:\s*['\"]?([^\s'\"#]+)")


def _key_like(text: str) -> tuple[str, ...]:
    """What in a config's text may be a key: ``llx-...`` words and ``api_key`` values."""
    found: set[str] = set()
    for match in _KEY_LIKE.finditer(text):
        found.add(match.group(1) or match.group(0))
    return tuple(found)


def parse_config(raw: Any, env: Mapping[str, str], base_dir: Path | None = None) -> Config:
    problems: list[str] = []
    secrets: list[str] = []  # every key value met, so that no problem can quote one
    try:
        config = _parse(raw, env, base_dir, problems, secrets)
    except RecursionError:  # parse_yaml bounds depth; a hand-built structure may not be
        problems.append(f"config: nested deeper than {MAX_CONFIG_DEPTH} levels")
    if problems:
        raise ConfigError([redact(p, tuple(secrets)) for p in problems])
    return config


def _parse(
    raw: Any, env: Mapping[str, str], base_dir: Path | None, problems: list[str], secrets: list[str]
) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["config: must be a mapping of keys to values"])
    raw = _expand(raw, env, "", problems)
    unknown_keys(raw, _TOP_KEYS, "", problems)

    lc = section(raw, "llamacloud", _LLAMACLOUD_KEYS, problems)
    web = section(raw, "web", _WEB_KEYS, problems)
    state = section(raw, "state", _STATE_KEYS, problems)
    detail = parse_detail(section(raw, "detail", DETAIL_KEYS, problems), problems)

    default_base = _base_url(lc.get("base_url"), "llamacloud.base_url", problems)
    if default_base is None:
        default_base = _base_url(env.get(BASE_URL_ENV), BASE_URL_ENV, problems) or NA_BASE_URL
    default_key = _api_key(lc, "llamacloud", base_dir, problems, secrets)
    default_source = _key_source(lc, "llamacloud")
    if default_key is None and env.get(API_KEY_ENV):
        default_source = f"the {API_KEY_ENV} environment variable"
        default_key = env[API_KEY_ENV].strip()
        secrets.append(default_key)
        if not _key_ok(default_key):
            problems.append(f"{API_KEY_ENV}: {_BAD_KEY}")
    default_page_size = whole_number(lc, "page_size", "llamacloud.", 100, 1, 1000, problems)

    timeout = _number(lc, "timeout_seconds", "llamacloud.", 30.0, MAX_TIMEOUT_SECONDS, problems)
    max_retries = whole_number(lc, "max_retries", "llamacloud.", 5, 0, 100, problems)
    max_pages = whole_number(lc, "max_pages", "llamacloud.", 10000, 1, 10**9, problems)
    max_bytes = whole_number(
        lc, "max_response_bytes", "llamacloud.", DEFAULT_MAX_RESPONSE_BYTES, 1024, 2**30, problems
    )
    default_listing = _listing(lc, "llamacloud.", "auto", problems)
    full_every = whole_number(lc, "full_listing_every", "llamacloud.", 10, 1, 1_000_000, problems)
    overlap = lc.get("incremental_overlap_seconds", 300.0)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)):
        problems.append("llamacloud.incremental_overlap_seconds: must be a number")
        overlap = 300.0
    elif not 0 <= overlap <= MAX_POLL_INTERVAL_SECONDS:
        problems.append(
            "llamacloud.incremental_overlap_seconds: must be between 0 and "
            f"{MAX_POLL_INTERVAL_SECONDS:g}"
        )
        overlap = 300.0
    rate = 0.0
    if lc.get("max_requests_per_second", 0) != 0:
        found: list[str] = []
        rate = _number(
            lc, "max_requests_per_second", "llamacloud.", 0.0, MAX_REQUESTS_PER_SECOND, found
        )
        if found:
            problems.append(
                "llamacloud.max_requests_per_second: must be 0 (no limit) or a number "
                f"greater than 0 and at most {MAX_REQUESTS_PER_SECOND:g}"
            )
    interval = _number(raw, "poll_interval_seconds", "", 60.0, MAX_POLL_INTERVAL_SECONDS, problems)
    concurrency = whole_number(raw, "max_concurrency", "", 4, 1, 1000, problems)

    listen = web.get("listen_address", DEFAULT_LISTEN_ADDRESS)
    check_listen_address(listen, "web.listen_address", problems)

    state_path = state.get("path")
    if state_path is not None and (
        not isinstance(state_path, str) or not state_path or "\0" in state_path
    ):
        problems.append("state.path: must be a file path")
        state_path = None

    discovery = None
    if raw.get("discovery") is not None:
        before = len(problems)
        section_raw = section(raw, "discovery", DISCOVERY_KEYS, problems)
        if not default_key and len(problems) == before:
            problems.append(
                "discovery: lists projects with llamacloud.api_key (or api_key_file, or the "
                f"{API_KEY_ENV} environment variable): set one"
            )
        template = ProjectConfig(
            id="",
            name="",
            organization_id="",
            base_url=default_base,
            page_size=default_page_size,
            api_key=Secret(default_key or ""),
            listing=default_listing,
            key_source=default_source,
        )
        discovery = parse_discovery(section_raw, template, problems)
    shard = _sharding(section(raw, "sharding", _SHARDING_KEYS, problems), problems)

    projects = _projects(
        raw.get("projects"),
        default_base,
        default_key,
        default_source,
        default_page_size,
        default_listing,
        base_dir,
        problems,
        secrets,
        required=discovery is None,
    )
    return Config(
        projects=tuple(projects),
        timeout_seconds=timeout,
        max_retries=max_retries,
        max_pages=max_pages,
        max_response_bytes=max_bytes,
        full_listing_every=full_every,
        incremental_overlap_seconds=float(overlap),
        max_requests_per_second=rate,
        poll_interval_seconds=interval,
        max_concurrency=concurrency,
        listen_address=listen,
        state_path=state_path,
        detail=detail,
        discovery=discovery,
        shard=shard,
    )


def _sharding(raw: dict[str, Any], problems: list[str]) -> Shard:
    total = whole_number(raw, "total", "sharding.", 1, 1, MAX_SHARDS, problems)
    index = whole_number(raw, "index", "sharding.", 0, 0, MAX_SHARDS - 1, problems)
    if index >= total:
        problems.append(f"sharding.index: must be below sharding.total ({total})")
        return UNSHARDED
    return Shard(index, total)


def _projects(
    value: Any,
    default_base: str,
    default_key: str | None,
    default_source: str,
    default_page_size: int,
    default_listing: str,
    base_dir: Path | None,
    problems: list[str],
    secrets: list[str],
    required: bool = True,
) -> list[ProjectConfig]:
    """The static projects; optional with discovery (``required`` False)."""
    if value is None or (value == [] and not required):
        if required:
            problems.append("projects: required (a list with at least one project, or discovery)")
        return []
    if not isinstance(value, list) or not value:
        problems.append("projects: must be a list with at least one project")
        return []
    out: list[ProjectConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        where = f"projects[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a mapping with at least an id")
            continue
        unknown_keys(item, _PROJECT_KEYS, where + ".", problems)
        pid = item.get("id")
        if pid is None or pid == "":
            problems.append(f"{where}.id: required")
            pid = ""
        elif not isinstance(pid, str):
            problems.append(f"{where}.id: must be a string")
            pid = ""
        elif pid in seen:
            problems.append(f"{where}.id: duplicate project id {pid}")
        seen.add(pid)
        name = _opt_str(item, "name", where, problems) or pid
        org = _opt_str(item, "organization_id", where, problems)
        base = _base_url(item.get("base_url"), f"{where}.base_url", problems) or default_base
        known = len(problems)
        key = _api_key(item, where, base_dir, problems, secrets)
        source = _key_source(item, where)
        if key is None and len(problems) == known:  # a key that was set but is bad is said
            key, source = default_key, default_source
            if not key:
                problems.append(
                    f"{where}.api_key: no API key (set {where}.api_key, llamacloud.api_key "
                    f"or the {API_KEY_ENV} environment variable)"
                )
        page_size = whole_number(
            item, "page_size", where + ".", default_page_size, 1, 1000, problems
        )
        out.append(
            ProjectConfig(
                id=pid,
                name=name,
                organization_id=org,
                base_url=base,
                page_size=page_size,
                api_key=Secret(key or ""),
                listing=_listing(item, where + ".", default_listing, problems),
                key_source=source,
            )
        )
    return out


def _expand(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in strings, after YAML parsing.

    Expanding after parsing means a secret containing YAML syntax cannot change the
    structure of the file.
    """
    if isinstance(value, dict):
        return {
            k: _expand(v, env, f"{path}.{k}" if path else str(k), problems)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, str):
        if "${" in value:

            def sub(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                if name in env and env[name] != "":
                    return env[name]
                if default is not None:
                    return default
                problems.append(f"{path}: environment variable {name} is not set")
                return ""

            # A reference ends at a "}": past the last one nothing can match, and leaving that
            # tail out keeps the search linear ("${a:-" repeated is quadratic otherwise).
            end = value.rfind("}") + 1
            value = _ENV_REF.sub(sub, value[:end]) + value[end:]
        if not is_text(value):
            problems.append(f"{path}: not valid Unicode text (an unpaired surrogate)")
            return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _opt_str(item: dict[str, Any], key: str, where: str, problems: list[str]) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(f"{where}.{key}: must be a string")
        return ""
    return value


def _listing(d: dict[str, Any], prefix: str, default: str, problems: list[str]) -> str:
    value = d.get("listing", default)
    if value not in LISTING_MODES:
        problems.append(f"{prefix}listing: must be one of {', '.join(LISTING_MODES)}")
        return default
    return str(value)


def _number(
    d: dict[str, Any], key: str, prefix: str, default: float, high: float, problems: list[str]
) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{prefix}{key}: must be a number")
        return default
    if not 0 < value <= high:
        problems.append(f"{prefix}{key}: must be greater than 0 and at most {high:g}")
        return default
    return float(value)


def _base_url(value: Any, where: str, problems: list[str]) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        problems.append(f"{where}: must be an http:// or https:// URL")
        return None
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, TypeError):
        problems.append(f"{where}: must be an http:// or https:// URL")
        return None
    if url.userinfo:
        problems.append(f"{where}: must not hold a user name or password (use api_key)")
        return None
    if url.query or url.fragment or not url.host:
        problems.append(f"{where}: must be a URL with a host and no query or fragment")
        return None
    return value.rstrip("/")


_BAD_KEY = "an API key is printable ASCII without spaces (LlamaCloud keys look like llx-...)"


def _key_ok(key: str) -> bool:
    return key.isascii() and key.isprintable() and not any(c.isspace() for c in key)


def _key_source(d: dict[str, Any], where: str) -> str:
    """Which key of the config holds the key, as said in messages."""
    if d.get("api_key") not in (None, ""):
        return f"{where}.api_key in the config"
    return f"{where}.api_key_file in the config"


def _api_key(
    d: dict[str, Any], where: str, base_dir: Path | None, problems: list[str], secrets: list[str]
) -> str | None:
    """The key set inline or in a file. No message quotes either value: a key pasted into
    ``api_key_file`` by mistake must not be printed back as a "file name"."""
    key = d.get("api_key")
    key_file = d.get("api_key_file")
    if isinstance(key, str):
        secrets.append(key)
    if key not in (None, "") and key_file not in (None, ""):
        problems.append(f"{where}.api_key_file: set api_key or api_key_file, not both")
        return None
    if key not in (None, ""):
        if not isinstance(key, str):
            problems.append(f"{where}.api_key: must be a string")
            return None
        if not _key_ok(key.strip()):
            problems.append(f"{where}.api_key: {_BAD_KEY}")
            return None
        return key.strip()
    if key_file not in (None, ""):
        if not isinstance(key_file, str):
            problems.append(f"{where}.api_key_file: must be a file path")
            return None
        file_path = Path(key_file)
        if not file_path.is_absolute() and base_dir is not None:
            file_path = base_dir / file_path
        try:
            data = read_bounded(file_path, MAX_KEY_FILE_BYTES)
        except FileProblem as exc:
            problems.append(f"{where}.api_key_file: cannot read the key file: {exc}")
            return None
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{where}.api_key_file: the key file is not UTF-8 text")
            return None
        secrets.append(text)
        if not text:
            problems.append(f"{where}.api_key_file: the key file is empty")
            return None
        if not _key_ok(text):
            problems.append(f"{where}.api_key_file: {_BAD_KEY}")
            return None
        return text
    return None
