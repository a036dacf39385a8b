"""Configuration: read YAML once, expand ``${VAR}``, validate against the schema, and build
the frozen objects.

Every problem is collected with its key path (``projects[1].id: required``) so that
``--check-config`` can list them all at once instead of one per run. The schema
(:mod:`.schema`) finds every problem the file shows on its own; what takes the environment
too (the key each project uses, ``LLAMA_CLOUD_API_KEY`` and ``LLAMA_CLOUD_BASE_URL``) is
checked here, once the file passes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from ..text import is_text
from .fields import Reading, messages
from .files import MAX_CONFIG_DEPTH, FileProblem, YamlProblem, load_yaml, read_config_text
from .headers import custom_headers
from .project import NA_BASE_URL, ProjectConfig
from .schema import BAD_KEY, ConfigFile, LlamaCloudSection, ProjectEntry, base_url, key_ok
from .secret import Secret, redact
from .settings import Config, ConfigError

API_KEY_ENV = "LLAMA_CLOUD_API_KEY"
PARSE_API_KEY_ENV = "LLAMA_PARSE_API_KEY"  # the SDK's fallback
BASE_URL_ENV = "LLAMA_CLOUD_BASE_URL"

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, expand ``${VAR}`` references and validate a config file."""
    text = ""
    try:
        text = read_config_text(path)
        return parse_config(parse_yaml(text), os.environ if env is None else env, Path(path).parent)
    except FileProblem as exc:
        problems = [f"config: {exc}"]
    except ConfigError as exc:
        problems = exc.problems
    # A YAML error may quote a bit of the file: blank anything that looks like a key.
    raise ConfigError([redact(p, _key_like(text)) for p in problems])


def parse_yaml(text: str) -> Any:
    """The YAML of a config, bounded (:func:`exporter.config.files.load_yaml`)."""
    try:
        return load_yaml(text)
    except YamlProblem as exc:
        raise ConfigError([f"config: {exc}"]) from None


_KEY_LIKE = re.compile(r"llx-[^\s'\"]+|api_key\s*:\s*['\"]?([^\s'\"#]+)")


def _key_like(text: str) -> tuple[str, ...]:
    """What in a config's text may be a key: ``llx-...`` words and ``api_key`` values, but
    not a plain ``${VAR}``: its name is no secret, and a message about it must name it."""
    found: set[str] = set()
    for match in _KEY_LIKE.finditer(text):
        found.add(match.group(1) or match.group(0))
    return tuple(value for value in found if not _PLAIN_REF.fullmatch(value))


_PLAIN_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def parse_config(raw: Any, env: Mapping[str, str], base_dir: Path | None = None) -> Config:
    """A config from parsed YAML: every problem at once, or the frozen settings."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["config: must be a mapping of keys to values"])
    problems: list[str] = []
    found = Reading(base_dir)  # and every key value met: no problem may quote one
    try:
        raw = _expand(raw, env, "", problems)
        # A key whose variable is unset has said so: what its empty value then lacks
        # ("required", "no API key") would be the same problem twice.
        unset = {problem.split(": ", 1)[0] for problem in problems}
        found.secrets += _key_values(raw)
        file = ConfigFile.model_validate(raw, context=found)
    except ValidationError as exc:
        problems += [p for p in messages(exc, "config") if p.split(": ", 1)[0] not in unset]
    except RecursionError:  # YAML is bounded in depth; a hand-built structure may not be
        problems.append(f"config: nested deeper than {MAX_CONFIG_DEPTH} levels")
    else:
        config = _build(file, env, found.secrets, problems, unset)
    if problems:
        raise ConfigError([redact(p, tuple(found.secrets)) for p in problems])
    return config


def _key_values(raw: dict[Any, Any]) -> list[str]:
    """Every ``api_key`` the file sets, good or bad."""
    projects = raw.get("projects")
    sections = [raw.get("llamacloud"), *(projects if isinstance(projects, list) else ())]
    return [
        s["api_key"] for s in sections if isinstance(s, dict) and isinstance(s.get("api_key"), str)
    ]


def _build(
    file: ConfigFile,
    env: Mapping[str, str],
    secrets: list[str],
    problems: list[str],
    unset: set[str],
) -> Config:
    """The settings of a valid file; problems of the keys it takes from the environment
    (none about a key in ``unset``, whose variable is not set: that was said)."""
    lc = file.llamacloud
    base = lc.base_url or _env_base_url(env, problems) or NA_BASE_URL
    key, source = _default_key(lc, env, secrets, problems)
    # The default key's variable is unset: projects that lack it were told why.
    said = bool(unset & {"llamacloud.api_key", "llamacloud.api_key_file"})
    template = ProjectConfig(
        id="",
        name="",
        organization_id="",
        base_url=base,
        page_size=lc.page_size,
        api_key=key,
        listing=lc.listing,
        runs=lc.runs,
        key_source=source,
        error_ratio_objective=lc.objectives.error_ratio,
    )
    discovery = None
    if file.discovery is not None:
        if not key.get() and not said:
            problems.append(
                "discovery: lists projects with llamacloud.api_key (or api_key_file, or the "
                f"{API_KEY_ENV} environment variable): set one"
            )
        discovery = file.discovery.settings(template)
    projects = [
        _project(f"projects[{i}]", p, template, problems, unset if not said else None)
        for i, p in enumerate(file.projects or ())
    ]
    return Config(
        projects=tuple(projects),
        timeout_seconds=lc.timeout_seconds,
        max_retries=lc.max_retries,
        max_pages=lc.max_pages,
        max_response_bytes=lc.max_response_bytes,
        full_listing_every=lc.full_listing_every,
        incremental_overlap_seconds=lc.incremental_overlap_seconds,
        max_session_reads_per_poll=lc.max_session_reads_per_poll,
        max_requests_per_second=lc.max_requests_per_second,
        poll_interval_seconds=file.poll_interval_seconds,
        max_concurrency=file.max_concurrency,
        listen_address=file.web.listen_address,
        state_path=file.state.path,
        detail=file.detail.settings(),
        discovery=discovery,
        shard=file.sharding.shard(),
        api_headers=custom_headers(env, problems),
    )


def _project(
    where: str,
    entry: ProjectEntry,
    template: ProjectConfig,
    problems: list[str],
    unset: set[str] | None,
) -> ProjectConfig:
    """A project: what it sets, the rest from ``llamacloud`` (``template``). A missing key is
    said unless ``unset`` (None: every key) names a key of it whose variable is not set."""
    key, source = entry.api_key or entry.api_key_file, _key_source(entry, where)
    if key is None:
        key, source = template.api_key, template.key_source
        said = unset is None or bool(unset & {f"{where}.api_key", f"{where}.api_key_file"})
        if not key.get() and not said:
            problems.append(
                f"{where}.api_key: no API key (set {where}.api_key, llamacloud.api_key "
                f"or the {API_KEY_ENV} environment variable)"
            )
    return replace(
        template,
        id=entry.id,
        name=entry.name,
        organization_id=entry.organization_id,
        base_url=entry.base_url or template.base_url,
        page_size=entry.page_size or template.page_size,
        api_key=key,
        listing=entry.listing or template.listing,
        runs=entry.runs or template.runs,
        key_source=source,
        error_ratio_objective=entry.error_ratio_objective(template.error_ratio_objective),
    )


def _default_key(
    lc: LlamaCloudSection, env: Mapping[str, str], secrets: list[str], problems: list[str]
) -> tuple[Secret, str]:
    """The key of every project that sets none, and where it came from (for messages): as
    the SDK, ``LLAMA_CLOUD_API_KEY``, or ``LLAMA_PARSE_API_KEY`` when that is unset or empty."""
    key = lc.api_key or lc.api_key_file
    name = next((name for name in (API_KEY_ENV, PARSE_API_KEY_ENV) if env.get(name)), None)
    if key is not None or name is None:
        return key or Secret(""), _key_source(lc, "llamacloud")
    value = env[name].strip()
    secrets.append(value)
    if not key_ok(value):
        problems.append(f"{name}: {BAD_KEY}")
    return Secret(value), f"the {name} environment variable"


def _key_source(section: LlamaCloudSection | ProjectEntry, where: str) -> str:
    """Which key of the config holds the key, as said in messages."""
    return f"{where}.api_key{'' if section.api_key else '_file'} in the config"


def _env_base_url(env: Mapping[str, str], problems: list[str]) -> str | None:
    try:
        return base_url(env.get(BASE_URL_ENV))
    except PydanticCustomError as exc:
        problems.append(f"{BASE_URL_ENV}: {exc.message()}")
        return None


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
