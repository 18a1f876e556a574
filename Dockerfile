# The gateway as a container image: a slim Python 3.11 base, the package and its runtime
# dependencies only (no test, dev or sim extras: the simulator, gateway_sim/, is a distribution of
# its own and is not in the build context), a non-root user, and the shipped gateway.yaml at
# /etc/gateway/gateway.yaml (Kubernetes and compose mount their own over it).
#
#   docker build -t inbox-gateway:0.1.0 .
#   docker run --rm --network host inbox-gateway:0.1.0
#
# The shipped gateway.yaml listens on 127.0.0.1: right for a sidecar (the backend shares the
# pod's network namespace), unreachable through `docker run -p`. To publish ports, mount a folder
# whose gateway.yaml listens on 0.0.0.0 over /etc/gateway (deploy/compose does).

# ---- build: a wheel for the gateway and for every runtime dependency
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --wheel-dir /wheels .

# ---- runtime
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-index --find-links=/tmp/wheels inbox-gateway && rm -rf /tmp/wheels
COPY gateway.yaml /etc/gateway/gateway.yaml
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9901
# /livez answers 200 while the event loop runs. The admin port is the one of the shipped
# gateway.yaml (9901); change both together.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9901/livez', timeout=2).status != 200)"]
# SIGTERM drains (drain.delay, then drain.timeout); SIGHUP reloads the config.
STOPSIGNAL SIGTERM
CMD ["gateway", "run", "--config", "/etc/gateway/gateway.yaml"]
