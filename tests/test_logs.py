"""Logs: JSON tracebacks without local variables, and no secret in any line."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import structlog

from exporter.config import Secret
from exporter.logs import configure_logging

KEY = "llx-Qw3rT5yU7iO9pA1sD3fG5hJ7kL9zX1cV"


@pytest.fixture
def json_lines(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    configure_logging("info", "json")

    def lines() -> list[dict[str, object]]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    try:
        yield lines
    finally:
        configure_logging("info", "console")


def test_a_traceback_carries_no_locals(json_lines) -> None:  # type: ignore[no-untyped-def]
    def listing(secret: str) -> None:
        headers = {"Authorization": f"Bearer {secret}"}  # noqa: F841 - a local to leak
        raise RuntimeError("boom")

    secret = Secret(KEY)
    try:
        listing(secret.get())
    except RuntimeError as exc:
        structlog.get_logger("t").error("failed", exc_info=exc)
    (line,) = json_lines()
    assert line["exception"][0]["frames"]
    assert not any("locals" in frame for frame in line["exception"][0]["frames"])
    assert KEY[4:12] not in json.dumps(line)


def test_a_secret_in_a_field_or_an_exception_message_is_blanked(json_lines) -> None:  # type: ignore[no-untyped-def]
    secret = Secret(KEY)
    log = structlog.get_logger("t")
    log.warning("odd", detail=f"server said {KEY}", part=KEY[5:20])
    try:
        raise ValueError(f"bad key {secret.get()}")
    except ValueError as exc:
        log.error("failed", exc_info=exc)
    text = json.dumps(json_lines())
    assert KEY[4:12] not in text and KEY[12:20] not in text
    assert text.count("********") >= 3


def test_stdlib_records_keep_their_first_line_only(json_lines) -> None:  # type: ignore[no-untyped-def]
    logging.getLogger("asyncio").error(
        "Task exception was never retrieved\nfuture: <Task exception=UnicodeDecodeError("
        "'utf-8', b'api_key: llx-inline-key-in-a-file', 3, 4, 'invalid start byte')>"
    )
    (line,) = json_lines()
    assert line["event"] == "Task exception was never retrieved"
    assert "inline" not in json.dumps(line)


def test_an_uncaught_exception_in_a_thread_is_logged_the_same_way(json_lines) -> None:  # type: ignore[no-untyped-def]
    secret = Secret(KEY)

    def run() -> None:
        raise RuntimeError(f"lost {secret.get()}")

    thread = threading.Thread(target=run, name="worker")
    thread.start()
    thread.join()
    (line,) = json_lines()
    assert line["event"] == "uncaught_exception" and line["thread"] == "worker"
    assert KEY[4:12] not in json.dumps(line)


class _Unwritable:
    """A stderr whose writes fail as a closed pipe or a full disk makes them fail."""

    def __init__(self, error: OSError) -> None:
        self.error = error

    def write(self, text: str) -> int:
        raise self.error

    def flush(self) -> None:
        raise self.error

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize(
    "error", [BrokenPipeError(32, "Broken pipe"), OSError(28, "No space left on device")]
)
def test_a_line_that_cannot_be_written_is_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    from exporter.logs import dropped_lines

    configure_logging("info", "json")
    try:
        monkeypatch.setattr("sys.stderr", _Unwritable(error))
        before = dropped_lines()
        log = structlog.get_logger("t")
        log.info("poll_succeeded", project_id="p")  # must not raise
        log.error("failed", exc_info=RuntimeError("boom"))
        logging.getLogger("asyncio").error("a stdlib record")
        assert dropped_lines() == before + 3
    finally:
        monkeypatch.undo()
        configure_logging("info", "console")


def test_a_processor_that_fails_costs_its_line_only(json_lines) -> None:  # type: ignore[no-untyped-def]
    from exporter.logs import dropped_lines

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        __str__ = __repr__

    before = dropped_lines()
    log = structlog.get_logger("t")
    log.info("odd", field=Unprintable())
    log.info("next")
    assert dropped_lines() == before + 1
    assert [line["event"] for line in json_lines()] == ["next"]
