# llamacloud-exporter container image. No "# syntax=" line: it would make BuildKit fetch a
# frontend image before building (offline and mirrored builds fail), and the file needs none.
#
#   docker build -t llamacloud-exporter .
#   docker run --rm -p 9877:9877 llamacloud-exporter --demo --web.listen-address 0.0.0.0:9877
#   docker run --rm -p 9877:9877 -e LLAMA_CLOUD_API_KEY \
#     -v "$PWD/config.yaml:/etc/llamacloud-exporter/config.yaml:ro" llamacloud-exporter
#
# The config file is read from /etc/llamacloud-exporter/config.yaml (mount it read-only);
# an optional state file lives under /var/lib/llamacloud-exporter/ (mount a volume there).

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# Build stage: resolve and install the package into a self-contained virtualenv, so the
# runtime stage needs neither pip's cache nor the source tree. pip itself then leaves the
# virtualenv: nothing installs at run time, and it was 16 of the image's 24 MB.
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip

# Runtime stage: only the virtualenv, a non-root user and the directories it may use.
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="llamacloud-exporter" \
      org.opencontainers.image.description="Prometheus exporter for LlamaCloud chat sessions" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
# Not --system: useradd warns that 10001 is outside the system range. --no-log-init: no
# lastlog entry, which for a high UID is a sparse file of gigabytes.
RUN groupadd --gid 10001 exporter \
    && useradd --uid 10001 --gid exporter --no-create-home --no-log-init \
       --home-dir /nonexistent --shell /usr/sbin/nologin exporter \
    && mkdir -p /etc/llamacloud-exporter /var/lib/llamacloud-exporter \
    && chown exporter:exporter /var/lib/llamacloud-exporter

COPY --from=build /opt/venv /opt/venv

# Bytecode is compiled at install time; the root filesystem may be read-only at run time.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLAMACLOUD_EXPORTER_HEALTHCHECK_URL="http://127.0.0.1:9877/healthz"

USER 10001:10001
WORKDIR /var/lib/llamacloud-exporter

EXPOSE 9877

# slim images ship no curl; the standard library is enough. Override the URL when the
# exporter listens on another port (--web.listen-address), or with https:// behind a web
# config with TLS (basic auth needs nothing: a 401 is an answer).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "exporter.healthcheck"]

ENTRYPOINT ["llamacloud-exporter"]
CMD ["--config", "/etc/llamacloud-exporter/config.yaml"]
