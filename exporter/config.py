"""Configuration: read YAML once, validate every key, return frozen objects.

Every problem is collected with its key path (``projects[1].id: required``) so that
``--check-config`` can list them all at once instead of one per run.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

NA_BASE_URL = "https://api.cloud.llamaindex.ai"
EU_BASE_URL = "https://api.cloud.eu.llamaindex.ai"
DEFAULT_LISTEN_ADDRESS = "0.0.0.0:9877"
API_KEY_ENV = "LLAMA_CLOUD_API_KEY"
BASE_URL_ENV = "LLAMA_CLOUD_BASE_URL"

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Secret:
    """A string that never shows itself in a repr, a log line or an f-string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ProjectConfig:
    id: str
    name: str
    organization_id: str
    base_url: str
    page_size: int
    api_key: Secret = field(repr=False)


@dataclass(frozen=True)
class Config:
    projects: tuple[ProjectConfig, ...]
    timeout_seconds: float = 30.0
    max_retries: int = 5
    max_pages: int = 10000
    max_requests_per_second: float = 0.0  # 0: no limit
    poll_interval_seconds: float = 60.0
    max_concurrency: int = 4
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    state_path: str | None = None

    def with_listen_address(self, address: str) -> Config:
        problems: list[str] = []
        _listen_address(address, "--web.listen-address", problems)
        if problems:
            raise ConfigError(problems)
        return replace(self, listen_address=address)


class ConfigError(Exception):
    """Raised with every problem found, each prefixed by its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


_TOP_KEYS = {
    "llamacloud",
    "projects",
    "poll_interval_seconds",
    "max_concurrency",
    "web",
    "state",
}
_LLAMACLOUD_KEYS = {
    "base_url",
    "api_key",
    "api_key_file",
    "page_size",
    "timeout_seconds",
    "max_retries",
    "max_pages",
    "max_requests_per_second",
}
_PROJECT_KEYS = {
    "id",
    "name",
    "organization_id",
    "api_key",
    "api_key_file",
    "base_url",
    "page_size",
}
_WEB_KEYS = {"listen_address"}
_STATE_KEYS = {"path"}


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand ``${VAR}`` references and validate a config file."""
    env = os.environ if env is None else env
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"config: cannot read {path}: {exc.strerror or exc}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"config: invalid YAML{where}"]) from None
    return parse_config(raw, env, base_dir=Path(path).parent)


def parse_config(raw: Any, env: Mapping[str, str], base_dir: Path | None = None) -> Config:
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["config: must be a mapping of keys to values"])
    raw = _expand(raw, env, "", problems)
    _unknown(raw, _TOP_KEYS, "", problems)

    lc = _section(raw, "llamacloud", _LLAMACLOUD_KEYS, problems)
    web = _section(raw, "web", _WEB_KEYS, problems)
    state = _section(raw, "state", _STATE_KEYS, problems)

    default_base = _base_url(lc.get("base_url"), "llamacloud.base_url", problems)
    if default_base is None:
        default_base = _base_url(env.get(BASE_URL_ENV), BASE_URL_ENV, problems) or NA_BASE_URL
    default_key = _api_key(lc, "llamacloud", base_dir, problems)
    if default_key is None and env.get(API_KEY_ENV):
        default_key = env[API_KEY_ENV].strip()
    default_page_size = _int(lc, "page_size", "llamacloud.", 100, 1, 1000, problems)

    timeout = _number(lc, "timeout_seconds", "llamacloud.", 30.0, problems)
    max_retries = _int(lc, "max_retries", "llamacloud.", 5, 0, 100, problems)
    max_pages = _int(lc, "max_pages", "llamacloud.", 10000, 1, 10**9, problems)
    rate = lc.get("max_requests_per_second", 0)
    if rate != 0:
        rate = _number(lc, "max_requests_per_second", "llamacloud.", 0.0, problems)
    interval = _number(raw, "poll_interval_seconds", "", 60.0, problems)
    concurrency = _int(raw, "max_concurrency", "", 4, 1, 1000, problems)

    listen = web.get("listen_address", DEFAULT_LISTEN_ADDRESS)
    _listen_address(listen, "web.listen_address", problems)

    state_path = state.get("path")
    if state_path is not None and (not isinstance(state_path, str) or not state_path):
        problems.append("state.path: must be a file path")
        state_path = None

    projects = _projects(
        raw.get("projects"), default_base, default_key, default_page_size, base_dir, problems
    )
    if problems:
        raise ConfigError(problems)
    return Config(
        projects=tuple(projects),
        timeout_seconds=timeout,
        max_retries=max_retries,
        max_pages=max_pages,
        max_requests_per_second=float(rate),
        poll_interval_seconds=interval,
        max_concurrency=concurrency,
        listen_address=listen,
        state_path=state_path,
    )


def _projects(
    value: Any,
    default_base: str,
    default_key: str | None,
    default_page_size: int,
    base_dir: Path | None,
    problems: list[str],
) -> list[ProjectConfig]:
    if value is None:
        problems.append("projects: required (a list with at least one project)")
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
        _unknown(item, _PROJECT_KEYS, where + ".", problems)
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
        key = _api_key(item, where, base_dir, problems)
        if key is None:
            key = default_key
        if not key:
            problems.append(
                f"{where}.api_key: no API key (set {where}.api_key, llamacloud.api_key "
                f"or the {API_KEY_ENV} environment variable)"
            )
        page_size = _int(item, "page_size", where + ".", default_page_size, 1, 1000, problems)
        out.append(
            ProjectConfig(
                id=pid,
                name=name,
                organization_id=org,
                base_url=base,
                page_size=page_size,
                api_key=Secret(key or ""),
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
    if isinstance(value, str) and "${" in value:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(sub, value)
    return value


def _section(raw: dict[str, Any], key: str, known: set[str], problems: list[str]) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key}: must be a mapping")
        return {}
    _unknown(value, known, key + ".", problems)
    return value


def _unknown(value: dict[Any, Any], known: set[str], prefix: str, problems: list[str]) -> None:
    for k in value:
        if k not in known:
            hint = _closest(str(k), known)
            extra = f" (did you mean {hint}?)" if hint else ""
            problems.append(f"{prefix}{k}: unknown key{extra}")


def _closest(key: str, known: set[str]) -> str | None:
    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return match[0] if match else None


def _opt_str(item: dict[str, Any], key: str, where: str, problems: list[str]) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(f"{where}.{key}: must be a string")
        return ""
    return value


def _int(
    d: dict[str, Any],
    key: str,
    prefix: str,
    default: int,
    low: int,
    high: int,
    problems: list[str],
) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{prefix}{key}: must be a whole number")
        return default
    if not low <= value <= high:
        problems.append(f"{prefix}{key}: must be between {low} and {high}")
        return default
    return value


def _number(d: dict[str, Any], key: str, prefix: str, default: float, problems: list[str]) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{prefix}{key}: must be a number of seconds")
        return default
    if not 0 < value < float("inf"):
        problems.append(f"{prefix}{key}: must be greater than 0")
        return default
    return float(value)


def _base_url(value: Any, where: str, problems: list[str]) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
        problems.append(f"{where}: must be an http:// or https:// URL")
        return None
    return value.rstrip("/")


def _api_key(
    d: dict[str, Any], where: str, base_dir: Path | None, problems: list[str]
) -> str | None:
    key = d.get("api_key")
    key_file = d.get("api_key_file")
    if key not in (None, "") and key_file not in (None, ""):
        problems.append(f"{where}.api_key_file: set api_key or api_key_file, not both")
        return None
    if key not in (None, ""):
        if not isinstance(key, str):
            problems.append(f"{where}.api_key: must be a string")
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
            text = file_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{where}.api_key_file: cannot read {key_file}: {exc.strerror or exc}")
            return None
        if not text:
            problems.append(f"{where}.api_key_file: {key_file} is empty")
            return None
        return text
    return None


def _listen_address(value: Any, where: str, problems: list[str]) -> None:
    if not isinstance(value, str):
        problems.append(f"{where}: must be HOST:PORT")
        return
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.append(f"{where}: must be HOST:PORT with a port from 0 to 65535")


def split_listen_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
