# ablo-connector: a non-root image that runs `ablo-connector run`.
#
#   docker build -t ablo-connector .
#   docker run --rm -e ABLO_API_KEY -e ABLO_CONNECTOR_HANDLER=mysource:MySource ablo-connector
#   docker run --rm -e ABLO_API_KEY -e ABLO_DATABASE_URL=postgresql://… ablo-connector
#
# Add your handler in a derived image (FROM ablo-connector, COPY it to /app)
# or mount it at /app. .ci/container-steps runs these same steps in a venv.

# Python 3.12 or later starts each request's task eagerly: a request that
# never waits is answered without an event-loop turn of its own.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels "$(echo /wheels/ablo_connector-*.whl)[postgres]"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ABLO_HEALTH_ADDR=0.0.0.0:9464 \
    ABLO_LOG_FORMAT=json
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && groupadd --gid 10001 ablo \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ablo
WORKDIR /app
COPY examples ./examples
USER 10001:10001
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ablo-connector"]
CMD ["run"]
