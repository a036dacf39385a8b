"""What the config tests share: a key, a project id, and the problems a config shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.config import ConfigError, load_config, parse_config

PID = "00000000-0000-0000-0000-000000000000"


def problems(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env or {})
    return info.value.problems


KEY = "llx-Zq8mW2xVb7Kp4Rt9Ls3Nd6Hf1Gj5Yc0Ue"


def load_problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return info.value.problems


ENV = {"LLAMA_CLOUD_API_KEY": "llx-k"}


def detail_problems(**raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"projects": [{"id": "p"}], "detail": raw}, ENV)
    return info.value.problems


def parsed(**top: Any) -> Any:
    return parse_config(top, ENV)


def problems_with_key(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, ENV if env is None else env)
    return info.value.problems
