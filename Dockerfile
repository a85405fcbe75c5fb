# Event gateway image: `gateway serve` (HTTP API + dispatcher) by default.
#
#   docker build -t event-gateway .
#   docker run -p 8080:8080 -e DATABASE_URL=postgresql://... -e GATEWAY_ADMIN_KEY=... event-gateway
#
# Other commands: `docker run event-gateway migrate`, `... serve --no-dispatcher`,
# `... dispatch --health-port 8080` (without --health-port a dispatcher serves no HTTP,
# so the HEALTHCHECK below cannot pass; disable it with --no-healthcheck).
# Every setting is an environment variable; `docker run event-gateway --help` lists them.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# PostgreSQL refuses to run as root, so the embedded database (used when DATABASE_URL
# is unset) needs a non-root user as much as the gateway itself does.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway \
       --create-home --shell /usr/sbin/nologin gateway

WORKDIR /tmp/build
# The server's dependencies exactly as locked (requirements.lock, with hashes; scripts/lock
# regenerates it), in their own layer so a code change does not reinstall them; then the
# gateway itself without resolving anything again.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
# README.md* : the README is optional for the build (pyproject names it as the long
# description); the wildcard keeps COPY from failing while it does not exist.
COPY pyproject.toml README.md* ./
COPY gateway ./gateway
COPY gateway_client ./gateway_client
COPY adapters ./adapters
COPY fakes ./fakes
RUN pip install --no-deps . \
    && pip check \
    && cd / \
    && rm -rf /tmp/build

WORKDIR /var/lib/gateway
# The embedded PostgreSQL's data (GATEWAY_DATA_DIR) when DATABASE_URL is unset: on a
# volume, so it outlives the container.
VOLUME ["/var/lib/gateway"]
USER gateway:gateway

# Listen on every interface so the published port reaches the API from outside.
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_DATA_DIR=/var/lib/gateway

EXPOSE 8080

# Ready = database reachable and dispatcher alive. No curl in slim: use Python, and
# bypass any HTTP(S)_PROXY set for outbound webhooks (the check is local).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/readyz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=4)"]

# Exec form: `gateway` is PID 1 and receives SIGTERM itself, so it can finish in-flight
# deliveries within GATEWAY_SHUTDOWN_GRACE_S before the container stops.
ENTRYPOINT ["gateway"]
CMD ["serve"]
