"""The container's health check: ``python -m exporter.healthcheck`` exits 0 when the exporter
answers on ``LLAMACLOUD_EXPORTER_HEALTHCHECK_URL`` (default ``http://127.0.0.1:9877/healthz``).

Slim images ship no curl, so this uses the standard library only. Behind a web config it
still works without being given a password or a CA: over https on loopback the certificate
is not checked (the check is about the process answering, not about who it is), and a 401
from basic auth is an answer too.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9877/healthz"


def main() -> int:
    url = os.environ.get("LLAMACLOUD_EXPORTER_HEALTHCHECK_URL", DEFAULT_URL)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as answer:
            return 0 if answer.status == 200 else 1
    except urllib.error.HTTPError as exc:
        return 0 if exc.code == 401 else 1
    except (OSError, ValueError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
