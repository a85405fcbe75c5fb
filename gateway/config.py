"""Settings, read once from the environment (``GATEWAY_*`` and ``DATABASE_URL``).

:data:`SETTINGS` is the single table of every variable: the loader, ``gateway --help``,
the README table and the docker-compose check all read it, so they cannot drift.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.health import HealthRules


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < 1:
        raise ValueError("must be at least 0 and below 1")
    return value


def _schedule(raw: str) -> tuple[float, ...]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts:
        raise ValueError("needs at least one delay in seconds")
    delays = tuple(float(p) for p in parts)
    if any(d < 0 for d in delays):
        raise ValueError("delays must not be negative")
    return delays


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


def _str(raw: str) -> str:
    return raw


def _log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"json", "text"}:
        raise ValueError("must be json or text")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be 0 or a positive number")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or a positive integer")
    return value


@dataclass(frozen=True)
class Setting:
    """One environment variable: where it lands in :class:`Settings` and what it means."""

    env: str
    attr: str
    parse: Callable[[str], Any]
    default: str | None
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "database_url", _str, None,
            "PostgreSQL URL (postgresql://user:pass@host:5432/db). "
            "Unset: an embedded PostgreSQL 16 is started in GATEWAY_DATA_DIR."),
    Setting("GATEWAY_DATA_DIR", "data_dir", _str, ".gateway",
            "Folder for the embedded PostgreSQL (used only without DATABASE_URL)."),
    Setting("GATEWAY_HOST", "host", _str, "127.0.0.1", "Address the HTTP API listens on."),
    Setting("GATEWAY_PORT", "port", _port, "8080", "Port the HTTP API listens on."),
    Setting("GATEWAY_ADMIN_KEY", "admin_key", _str, None,
            "Operator key (Bearer) that manages apps. Unset: a random one is generated and "
            "printed at start-up."),
    Setting("GATEWAY_URL", "url", _str, None,
            "Gateway the CLI's API commands call (apps, endpoints, events, deliveries, "
            "devices, tail) (default: http://GATEWAY_HOST:GATEWAY_PORT)."),
    Setting("GATEWAY_API_KEY", "api_key", _str, None,
            "App API key the CLI's app commands send (endpoints, events, deliveries, "
            "devices, tail); 'gateway apps' sends GATEWAY_ADMIN_KEY."),
    Setting("GATEWAY_MAX_PAYLOAD_BYTES", "max_payload_bytes", _positive_int, "262144",
            "Largest accepted request body, in bytes (413 payload_too_large above it)."),
    Setting("GATEWAY_DELIVERY_TIMEOUT_S", "delivery_timeout_s", _positive_float, "15",
            "Seconds an endpoint has to answer a webhook with 2xx."),
    Setting("GATEWAY_RETRY_SCHEDULE", "retry_schedule", _schedule,
            "5,300,1800,7200,18000,36000,36000",
            "Comma-separated delays in seconds between attempts; the delivery fails "
            "after the last one."),
    Setting("GATEWAY_RETRY_JITTER", "retry_jitter", _fraction, "0.2",
            "Random spread applied to each retry delay (0.2 = plus or minus 20%)."),
    Setting("GATEWAY_RETRY_AFTER_MAX_S", "retry_after_max_s", _positive_float, "3600",
            "Longest Retry-After (on 429/503) the gateway honours, in seconds."),
    Setting("GATEWAY_SHUTDOWN_GRACE_S", "shutdown_grace_s", _positive_float, "10",
            "On SIGTERM, seconds (counted from the signal) to finish in-flight requests "
            "and deliveries before releasing the rest."),
    Setting("GATEWAY_ALLOW_PRIVATE_ENDPOINTS", "allow_private_endpoints", _bool, "false",
            "Allow endpoint URLs that resolve to loopback, private, link-local or "
            "metadata addresses."),
    Setting("GATEWAY_DISPATCH_CONCURRENCY", "dispatch_concurrency", _positive_int, "256",
            "Deliveries in flight at once, per dispatcher process."),
    Setting("GATEWAY_ENDPOINT_CONCURRENCY", "endpoint_concurrency", _positive_int, "64",
            "Deliveries in flight at once to one endpoint, per dispatcher process."),
    Setting("GATEWAY_DISPATCH_BATCH", "dispatch_batch", _positive_int, "200",
            "Most deliveries claimed from the database in one query."),
    Setting("GATEWAY_POLL_INTERVAL_S", "poll_interval_s", _positive_float, "1",
            "Fallback poll when no LISTEN/NOTIFY wake-up arrives, in seconds."),
    Setting("GATEWAY_CLAIM_INTERVAL_S", "claim_interval_s", _non_negative_float, "0.01",
            "After a wake-up, the next claim waits until this long after the previous one "
            "began, so a trickle of events shares claims (each costs PostgreSQL about "
            "2 ms); 0: claim at every wake-up. A backlog is claimed without pause."),
    Setting("GATEWAY_LEASE_S", "lease_s", _positive_float, None,
            "How long a claimed delivery stays reserved for one dispatcher before another "
            "may take it (default: delivery timeout + 30 s)."),
    Setting("GATEWAY_FCM_URL", "fcm_url", _str, "https://fcm.googleapis.com",
            "FCM base URL; /v1/projects/{project_id}/messages:send is appended."),
    Setting("GATEWAY_FCM_TOKEN_URL", "fcm_token_url", _str, None,
            "OAuth2 token URL where FCM access tokens are exchanged (default: Google's, "
            "https://oauth2.googleapis.com/token). Service accounts naming another "
            "token_uri are refused."),
    Setting("GATEWAY_APNS_URL", "apns_url", _str, None,
            "APNs base URL for both environments; /3/device/{token} is appended (default: "
            "api.push.apple.com, or api.sandbox.push.apple.com for sandbox credentials)."),
    Setting("GATEWAY_PROVIDER_CA_FILE", "provider_ca_file", _str, None,
            "Extra CA bundle (PEM) trusted for FCM, its token URL and APNs."),
    Setting("GATEWAY_PUSH_CONCURRENCY", "push_concurrency", _positive_int, "128",
            "Push sends in flight at once to one provider, per dispatcher process."),
    Setting("GATEWAY_DB_POOL_SIZE", "db_pool_size", _positive_int, "10",
            "PostgreSQL connections per process."),
    Setting("GATEWAY_LOG_LEVEL", "log_level", _log_level, "INFO",
            "DEBUG, INFO, WARNING or ERROR."),
    Setting("GATEWAY_LOG_FORMAT", "log_format", _log_format, "text",
            "json (one object per line) or text."),
    Setting("GATEWAY_METRICS_KEY", "metrics_key", _str, None,
            "Bearer key GET /metrics requires. Unset: /metrics answers loopback clients "
            "only."),
    Setting("GATEWAY_RETENTION_DAYS", "retention_days", _non_negative_int, "30",
            "Finished deliveries, their attempts and their events are deleted this many days "
            "after they happened, whole partitions at a time: at most a quarter later, or a "
            "day under 4 days (a partition holds a quarter of these days, one to seven; 0: "
            "keep everything)."),
    Setting("GATEWAY_SECRET_KEY", "secret_key", _str, None,
            "Keys (comma-separated, newest first) that seal endpoint secrets and header "
            "values, push credentials' keys and user-token secrets at rest with AES-256-GCM; "
            "each 32 bytes in urlsafe base64 ('gateway secrets new-key'). Unset: stored in "
            "plain text (a warning at start-up)."),
    Setting("GATEWAY_APP_CONCURRENCY", "app_concurrency", _positive_int, "128",
            "Deliveries of one app in flight at once, per dispatcher process: no app takes "
            "every slot while others wait."),
    Setting("GATEWAY_AUTH_FAILURES", "auth_failures", _positive_int, "20",
            "Failed keys from one client address within GATEWAY_AUTH_FAILURE_WINDOW_S after "
            "which that address gets 429 rate_limited, per process."),
    Setting("GATEWAY_AUTH_FAILURE_WINDOW_S", "auth_failure_window_s", _positive_float, "10",
            "The window, in seconds, in which failed keys are counted."),
    Setting("GATEWAY_AUTH_BLOCK_S", "auth_block_s", _positive_float, "60",
            "How long, in seconds, an address stays refused after too many failed keys."),
    Setting("GATEWAY_MAX_ENDPOINTS", "max_endpoints", _positive_int, "100",
            "Endpoints per app, unless the app's own max_endpoints says otherwise."),
    Setting("GATEWAY_MAX_DEVICES_PER_USER", "max_devices_per_user", _positive_int, "20",
            "Live devices per user of an app, unless the app's own limit says otherwise."),
    Setting("GATEWAY_MAX_TOPICS_PER_DEVICE", "max_topics_per_device", _positive_int, "100",
            "Topics per device, unless the app's own limit says otherwise."),
    Setting("GATEWAY_MAX_STREAMS_PER_APP", "max_streams_per_app", _positive_int, "10",
            "Open GET /v1/deliveries/stream connections per app and process; past it, "
            "429."),
    Setting("GATEWAY_MAX_EVENT_TYPES", "max_event_types", _positive_int, "1000",
            "Event types in one app's catalog (operator-wide); past it, 422."),
    Setting("GATEWAY_EVENT_TYPE_CACHE_S", "event_type_cache_s", _positive_float, "10",
            "How long a process keeps an event type's schema for ingest: a change made "
            "through another process applies within this long."),
    Setting("GATEWAY_TASK_BATCH", "task_batch", _positive_int, "500",
            "Rows a background task (recover, replay) handles per transaction."),
    Setting("GATEWAY_TASK_PAUSE_S", "task_pause_s", _non_negative_float, "0.05",
            "Pause between two batches of background tasks, in seconds, to leave the "
            "database room for live traffic."),
    Setting("GATEWAY_CIRCUIT_FAILURES", "circuit_failures", _positive_int, "5",
            "Failed attempts in a row (error statuses, timeouts, refused connections) that "
            "open an endpoint's circuit: nothing is sent to it until a probe succeeds."),
    Setting("GATEWAY_CIRCUIT_COOLDOWN_S", "circuit_cooldown_s", _positive_float, "30",
            "Seconds an open circuit waits before one probe delivery goes; a failed probe "
            "opens it for another cooldown."),
    Setting("GATEWAY_DISABLE_AFTER_S", "disable_after_s", _positive_float, "432000",
            "An endpoint whose every attempt failed for this many seconds (5 days), with "
            "no success in between, is disabled (disabled_reason failing)."),
    Setting("GATEWAY_ENDPOINT_RATE_MARGIN_S", "endpoint_rate_margin_s", _fraction, "0.1",
            "An endpoint's rate_limit holds over any window of 1 s plus this many seconds "
            "of send starts, so that the spread of network delays does not bunch more than "
            "rate_limit requests into one second at the receiver (0 to below 1)."),
)


@dataclass(frozen=True)
class Settings:
    """The gateway's configuration; build it with :func:`load_settings`."""

    database_url: str | None = None
    data_dir: str = ".gateway"
    host: str = "127.0.0.1"
    port: int = 8080
    admin_key: str | None = None
    url: str | None = None
    api_key: str | None = None
    max_payload_bytes: int = 262144
    delivery_timeout_s: float = 15.0
    retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    retry_jitter: float = 0.2
    retry_after_max_s: float = 3600.0
    shutdown_grace_s: float = 10.0
    allow_private_endpoints: bool = False
    dispatch_concurrency: int = 256
    endpoint_concurrency: int = 64
    dispatch_batch: int = 200
    poll_interval_s: float = 1.0
    claim_interval_s: float = 0.01
    lease_s: float | None = None
    fcm_url: str = "https://fcm.googleapis.com"
    fcm_token_url: str | None = None
    apns_url: str | None = None
    provider_ca_file: str | None = None
    push_concurrency: int = 128
    db_pool_size: int = 10
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_key: str | None = None
    retention_days: int = 30
    secret_key: str | None = None
    app_concurrency: int = 128
    auth_failures: int = 20
    auth_failure_window_s: float = 10.0
    auth_block_s: float = 60.0
    max_endpoints: int = 100
    max_devices_per_user: int = 20
    max_topics_per_device: int = 100
    max_streams_per_app: int = 10
    max_event_types: int = 1000
    event_type_cache_s: float = 10.0
    task_batch: int = 500
    task_pause_s: float = 0.05
    circuit_failures: int = 5
    circuit_cooldown_s: float = 30.0
    disable_after_s: float = 432000.0
    endpoint_rate_margin_s: float = 0.1

    @property
    def effective_lease_s(self) -> float:
        return self.lease_s if self.lease_s is not None else self.delivery_timeout_s + 30.0

    @property
    def handoff_wait_s(self) -> float:
        """How long a push a fan-out handed its own dispatcher may wait to start: its lease
        must still cover an attempt that fetches an access token and then pushes (each up
        to the delivery timeout; one that refreshes a refused token and sends again is
        held to those two as well), and it keeps half the spare a claimed one has."""
        return max(0.0, (self.effective_lease_s - 2 * self.delivery_timeout_s) / 2)

    @property
    def health_rules(self) -> HealthRules:
        return HealthRules(self.circuit_failures, self.circuit_cooldown_s,
                           self.disable_after_s)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def client_url(self) -> str:
        """Where the CLI's API commands go: GATEWAY_URL, else this host and port."""
        if self.url:
            return self.url.rstrip("/")
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every :data:`SETTINGS` variable; a malformed value raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.env)
        if raw is None or raw == "":
            continue
        try:
            values[setting.attr] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.env}={raw!r}: {exc}") from exc
    known = {f.name for f in fields(Settings)}
    assert all(s.attr in known for s in SETTINGS)
    return Settings(**values)


def settings_help() -> str:
    """The variables as plain text, for ``--help``."""
    lines = ["environment variables:"]
    for s in SETTINGS:
        default = f" (default: {s.default})" if s.default is not None else ""
        lines.append(f"  {s.env}{default}\n      {s.help}")
    return "\n".join(lines)
