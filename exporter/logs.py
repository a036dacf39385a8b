"""structlog set-up: JSON lines in production, readable lines on a terminal.

Whatever the format, a log line never carries a secret: tracebacks are rendered without
local variables (a listing's frames once held the key and the Authorization header), and
every rendered line passes through :func:`exporter.config.secret.redact` last. Uncaught exceptions
of any thread, and the standard library's own logging, go through the same pipeline.

A log call never raises: a line that cannot be rendered or written (stderr's reader gone, the
log disk full) is dropped and counted (:func:`dropped_lines`), so logging can never stop a
poll, a save or a loop.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from .config import redact

LEVELS = ("debug", "info", "warning", "error")

_dropped_lock = threading.Lock()
_dropped = 0


def dropped_lines() -> int:
    """Log lines dropped since the process started because they could not be written."""
    return _dropped


def _drop() -> None:
    global _dropped
    with _dropped_lock:
        _dropped += 1


def _never_raising(base: type[Any]) -> type[Any]:
    """``base`` (a structlog bound logger class) whose every log call swallows its own
    failure: a closed pipe, a full disk or a processor's bug costs that line, nothing else."""

    class NeverRaising(base):  # type: ignore[misc]
        def _proxy_to_logger(
            self, method_name: str, event: str | None = None, **event_kw: Any
        ) -> Any:
            try:
                return super()._proxy_to_logger(method_name, event, **event_kw)
            except Exception:
                _drop()
                return None

    NeverRaising.__name__ = base.__name__
    return NeverRaising


def _redact(logger: Any, method: str, line: str) -> str:
    """The last processor: the rendered line, with every known secret blanked."""
    return redact(line)


def configure_logging(level: str = "info", fmt: str | None = None) -> None:
    """``fmt`` None picks console on a terminal and JSON otherwise."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [
            structlog.processors.ExceptionRenderer(
                ExceptionDictTransformer(show_locals=False, max_frames=20)
            ),
            structlog.processors.JSONRenderer(),
        ]
    else:
        # Plain tracebacks: a rich one would print local variables, and a local may be a key.
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        )
    processors.append(_redact)
    structlog.configure(
        processors=processors,
        wrapper_class=_never_raising(
            structlog.make_filtering_bound_logger(logging.getLevelName(level.upper()))
        ),
        # sys.stderr as it is when a line is written, not when logging was set up.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    _route_stdlib(level)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


def _stderr_logger(*args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


class _ToStructlog(logging.Handler):
    """The standard library's records (asyncio's, httpx's) as structlog events."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            # The first line only: asyncio adds lines of object reprs ("future: <Task ...
            # exception=UnicodeDecodeError('utf-8', b'<the whole file>', ...)>").
            event = record.getMessage().split("\n", 1)[0]
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                fields["exc_info"] = record.exc_info
            log.log(record.levelno, event, **fields)
        except Exception:  # a log line must never take the process down
            self.handleError(record)


def _route_stdlib(level: str) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _ToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(max(logging.getLevelName(level.upper()), logging.WARNING))


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    structlog.get_logger("exporter").error("uncaught_exception", exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    structlog.get_logger("exporter").error(
        "uncaught_exception",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
