"""Bounded reading of what a user or a server hands the exporter: files, YAML and text.

A config file or a key file is read only up to its limit, and never from a FIFO or a device
(which could hang or never end); YAML aliases are expanded only up to a number of values, so
a few hundred bytes of anchors (a "billion laughs") cannot grow to gigabytes. Messages never
quote a path or the contents: the caller knows which file it asked for.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_CONFIG_VALUES = 1_000_000
MAX_CONFIG_DEPTH = 64


class YamlProblem(Exception):
    """YAML that cannot be used; the message says why and where, quoting at most a word."""


class FileProblem(Exception):
    """A file that cannot be used; the message never quotes the path or the contents."""


def read_bounded(path: str | Path, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes.

    A FIFO would block the open or the read forever and a device such as ``/dev/zero`` never
    ends, so anything but a regular file (or a link to one) is refused before reading.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileProblem(exc.strerror or type(exc).__name__) from None
    except ValueError:
        raise FileProblem("the path is not valid") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileProblem("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 16, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FileProblem(f"larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise FileProblem(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)


def read_config_text(path: str | Path) -> str:
    """A config file's text, bounded: FileProblem says what is wrong (never the contents)."""
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES)
    except FileProblem as exc:
        raise FileProblem(f"cannot read {path}: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"not UTF-8 text (an invalid byte at offset {exc.start})") from None


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, bounded: aliases may not expand past ``MAX_CONFIG_VALUES`` values
    or nest deeper than ``MAX_CONFIG_DEPTH``, and no parser failure escapes as a crash."""
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "not YAML"
        raise YamlProblem(f"invalid YAML{where}: {what}") from None
    except yaml.YAMLError:
        raise YamlProblem("invalid YAML") from None
    except RecursionError:
        raise YamlProblem(f"nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError):
        # A tagged value the constructor cannot build, such as the date 2026-13-45.
        raise YamlProblem("invalid YAML: a value cannot be read") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_size(root: yaml.Node) -> None:
    """Count the values the document expands to, aliases included, without expanding it."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        children = _children(node)
        if closing:
            open_nodes.discard(key)
            size = 1 + sum(sizes[id(child)] for child in children)
            depth = 1 + max((depths[id(child)] for child in children), default=0)
            if size > MAX_CONFIG_VALUES:
                raise YamlProblem(f"expands to more than {MAX_CONFIG_VALUES} values (YAML aliases)")
            if depth > MAX_CONFIG_DEPTH:
                raise YamlProblem(f"nested deeper than {MAX_CONFIG_DEPTH} levels")
            sizes[key] = size
            depths[key] = depth
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YamlProblem("a YAML alias refers to itself")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
