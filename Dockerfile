# syntax=docker/dockerfile:1
# Multi-stage build of the Event Stream Service. The install step is the
# README's (`pip install .` into a virtual environment); keep them identical.

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/ess
COPY pyproject.toml README.md ./
COPY amqp ./amqp
COPY actors ./actors
COPY web ./web
COPY ess ./ess
RUN /opt/ess/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/ess/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin ess \
 && mkdir -p /data && chown ess /data
COPY --from=build /opt/ess /opt/ess
ENV PATH=/opt/ess/bin:$PATH \
    ESS_DATABASE=/data/event-streams.db \
    PYTHONUNBUFFERED=1
USER ess
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8081/health/live', timeout=2).status == 200 else 1)"]
CMD ["ess", "serve"]
