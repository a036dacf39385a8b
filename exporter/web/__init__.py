"""The HTTP side: a bounded server, its web config (TLS, basic auth) and the exporter's app.

By job: :mod:`.server` (connections, threads, deadlines, bytes held), :mod:`.protocol`
(HTTP/1.1 requests read with h11, the app's request and response), :mod:`.config` (the
exporter-toolkit web config), :mod:`.auth` (bcrypt checks at a bounded cost), :mod:`.app`
(``/metrics``, ``/healthz``, ``/readyz``, ``/-/reload`` and the landing page).
"""

from __future__ import annotations

from .app import MetricsServer
from .config import WebConfig, WebConfigError, load_web_config
from .server import MAX_CONNECTIONS, Limits

__all__ = [
    "MAX_CONNECTIONS",
    "Limits",
    "MetricsServer",
    "WebConfig",
    "WebConfigError",
    "load_web_config",
]
