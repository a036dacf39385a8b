"""The exporter's HTTP endpoints: /metrics, /healthz, /readyz, POST /-/reload and a landing page.

:func:`make_app` is the app, from a request to its response; :class:`MetricsServer` serves it
on the bounded server of :mod:`exporter.web.server` (its own event-loop thread and a few worker
threads), so a scrape never waits for the poller's event loop and no client can exhaust the
process's threads or files.
A web config (``--web.config.file``) adds TLS and basic auth in front of every endpoint;
:class:`MetricsServer` checks passwords on the server's event loop before a worker thread
takes the request, so requests waiting for a bcrypt check never hold one.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from urllib.parse import parse_qs

from prometheus_client.exposition import choose_encoder

from .. import __version__
from ..metrics import StoreCollector, TextExposition
from ..store import ProjectState, Store
from .auth import AuthResult
from .config import WebConfig
from .protocol import App, Headers, Request, Response
from .server import HttpServer, Limits


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _row(p: ProjectState) -> str:
    if not p.polled:
        outcome = "pending"
    elif p.up:
        outcome = "ok"
    else:
        outcome = f"failed: {p.last_error}"
    sessions = "" if p.snapshot is None else str(p.snapshot.sessions)
    duration = "" if p.last_poll_duration is None else f"{p.last_poll_duration:.3f} s"
    cells = (
        p.project_id,
        p.name or "\u2014",  # none configured: a dash, not the id again
        sessions,
        _fmt_time(p.last_poll_finished),
        duration,
        outcome,
        _fmt_time(p.last_success),
    )
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def landing_page(store: Store) -> bytes:
    rows = "\n".join(_row(p) for p in store.projects())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>LlamaCloud Exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>LlamaCloud Exporter</h1>
<p>Version {html.escape(__version__)}. <a href="/metrics">Metrics</a> ·
<a href="/healthz">Health</a> · <a href="/readyz">Readiness</a></p>
<table><thead><tr><th>Project</th><th>Name</th><th>Sessions</th><th>Last poll</th>
<th>Poll duration</th><th>Outcome</th><th>Last success</th></tr></thead>
<tbody>
{rows}
</tbody></table></body></html>
""".encode()


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether the first gzip in Accept-Encoding is wanted: ``gzip;q=0`` says no, which
    prometheus_client's ``gzip_accepted`` would take for yes."""
    for token in accept_encoding.split(","):
        coding, _, params = token.partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


Reload = Callable[[], tuple[bool, str]]

_READ = ("GET", "HEAD")
# Each page and the methods it takes; HEAD is answered as GET, and the server drops the body.
ROUTES: dict[str, tuple[str, ...]] = {
    "/metrics": _READ,
    "/healthz": _READ,
    "/readyz": _READ,
    "/": _READ,
    "/index.html": _READ,
    "/-/reload": ("POST",),
}


def make_app(
    store: Store,
    reload: Callable[[], Reload | None] = lambda: None,
    web: Callable[[], WebConfig | None] = lambda: None,
) -> App:
    # Every /metrics answer, ?name[]= filtered or not, comes from the per-project cache.
    exposition = TextExposition(StoreCollector(store), store)
    # One reload at a time holds a worker (up to a minute); more would starve the scrapes.
    reloading = threading.Lock()

    def guarded(request: Request) -> Response:
        """Basic auth before anything else, and the web config's headers on every answer."""
        config = web()
        if config is None:
            return app(request)
        result = request.auth
        if result is None:  # served by a server that did not check it
            result = config.basic_auth.check(request.header("authorization"))
        if result is AuthResult.BUSY:
            response = _text(
                "503 Service Unavailable",
                b"too many password checks at once: try again\n",
                ("Retry-After", "1"),
            )
        # Never logged, and a wrong password says no more than a missing one.
        elif result is not AuthResult.GRANTED:
            response = _text(
                "401 Unauthorized",
                b"unauthorized\n",
                ("WWW-Authenticate", 'Basic realm="llamacloud-exporter", charset="UTF-8"'),
            )
        else:
            response = app(request)
        return replace(response, headers=(*response.headers, *config.headers.items()))

    def app(request: Request) -> Response:
        path = request.path
        allowed = ROUTES.get(path)
        if allowed is None:
            return _text("404 Not Found", b"not found\n")
        if request.method not in allowed:
            use = " or ".join(allowed)
            return _text(
                "405 Method Not Allowed", f"use {use}\n".encode(), ("Allow", ", ".join(allowed))
            )
        if path == "/metrics":
            # Negotiated and filtered as prometheus_client does it; the body comes from the cache.
            names = parse_qs(request.query).get("name[]")
            try:
                _, content_type = choose_encoder(request.header("accept"))
            except Exception:  # "version=abc": prometheus_client cannot read it
                _, content_type = choose_encoder("")
            openmetrics = content_type.startswith("application/openmetrics-text")
            headers: Headers = (("Content-Type", content_type),)
            if _accepts_gzip(request.header("accept-encoding")):
                body = exposition.render_gzip(openmetrics=openmetrics, names=names)
                headers += (("Content-Encoding", "gzip"),)
            else:
                body = exposition.render(openmetrics=openmetrics, names=names)
            return Response("200 OK", headers, body)
        if path == "/-/reload":
            handler = reload()
            if handler is None:
                return _text(
                    "403 Forbidden",
                    b"reloading over HTTP is off: start with --config and --web.enable-lifecycle\n",
                )
            if not reloading.acquire(blocking=False):
                return _text(
                    "503 Service Unavailable",
                    b"a reload is already running: try again when it has finished\n",
                    ("Retry-After", "5"),
                )
            try:
                ok, message = handler()
            except Exception as exc:  # the daemon is stopping, or the reload hung
                ok, message = False, f"reload did not finish: {type(exc).__name__}"
            finally:
                reloading.release()
            status = "200 OK" if ok else "500 Internal Server Error"
            return _text(status, message.encode() + b"\n")
        if path == "/healthz":
            return _text("200 OK", b"ok\n")
        if path == "/readyz":
            if store.ready():
                return _text("200 OK", b"ready\n")
            return _text("503 Service Unavailable", b"waiting for the first poll\n")
        return Response(
            "200 OK", (("Content-Type", "text/html; charset=utf-8"),), landing_page(store)
        )

    return guarded


def _text(status: str, body: bytes, *extra: tuple[str, str]) -> Response:
    return Response(status, (("Content-Type", "text/plain; charset=utf-8"), *extra), body)


class MetricsServer(HttpServer):
    """The exporter's app on the bounded server, on its own daemon thread.

    ``limits`` is for tests and tuning; the defaults are :mod:`exporter.web.server`'s constants.
    """

    def __init__(
        self,
        host: str,
        port: int,
        store: Store,
        limits: Limits | None = None,
        web: WebConfig | None = None,
    ) -> None:
        self.reload: Reload | None = None  # set once the daemon can reload its config
        # Replaced whole by a reload: new connections and requests see the new one.
        self.web = web
        super().__init__(
            host,
            port,
            make_app(store, lambda: self.reload, lambda: self.web),
            limits,
            tls=lambda: None if self.web is None else self.web.ssl_context(),
            accept_peer=lambda cert: self.web is None or self.web.check_client_cert(cert),
            prepare=self._check_password,
        )

    async def _check_password(self, request: Request) -> Request:
        """The request's basic auth, checked on the event loop: a request waiting for its
        bcrypt check holds no worker thread, so the workers go on serving the others."""
        web = self.web
        if web is None or not web.auth_enabled:
            return request
        result = await web.basic_auth.check_async(request.header("authorization"))
        return replace(request, auth=result)

    @property
    def scheme(self) -> str:
        return "https" if self.web is not None and self.web.tls_enabled else "http"
