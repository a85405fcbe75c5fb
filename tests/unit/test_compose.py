"""docker-compose.yml and the Dockerfile agree with what the gateway actually reads.

Every check goes back to a source of truth in the code: :data:`gateway.config.SETTINGS`
(names, parsers, defaults), :func:`gateway.config.load_settings` and ``[project.scripts]``
in pyproject.toml. Nothing here needs Docker.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from gateway.config import SETTINGS, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"

KNOWN_VARIABLES = {s.env: s for s in SETTINGS}
DEFAULT_PORT = int(KNOWN_VARIABLES["GATEWAY_PORT"].default or "")
# Stands in for a ${VAR} / ${VAR:?error} that compose fills from the shell at `up` time.
DUMMY = "dummy-interpolated-value"

_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<named>[A-Za-z_][A-Za-z0-9_]*)")
_WITH_DEFAULT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*:?-(?P<default>.*)", re.DOTALL)
_URL = re.compile(r"https?://[^\s'\"]+")


# --------------------------------------------------------------------------- helpers


def _resolve(value: str) -> str:
    """The value compose would pass, with ``${VAR:-default}`` taken as its default and any
    other interpolation as :data:`DUMMY`; ``$$`` is compose's escaped ``$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        braced = match.group("braced")
        if braced is not None:
            with_default = _WITH_DEFAULT.fullmatch(braced)
            if with_default is not None:
                return with_default.group("default")
        return DUMMY

    return _INTERPOLATION.sub(substitute, value)


def _scalar(value: object) -> str | None:
    """A YAML environment value as compose passes it (``true`` -> "true"; null -> None,
    meaning "taken from the shell running compose")."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise AssertionError(f"environment value {value!r} is not a scalar")


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's ``environment``, in either the mapping or the ``KEY=value`` list form."""
    raw = service.get("environment") or {}
    if isinstance(raw, dict):
        return {str(k): _scalar(v) for k, v in raw.items()}
    assert isinstance(raw, list), f"environment must be a mapping or a list, got {raw!r}"
    env: dict[str, str | None] = {}
    for item in raw:
        key, sep, val = str(item).partition("=")
        env[key] = val if sep else None
    return env


def _resolved_environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: _resolve(v) for k, v in _environment(service).items() if v is not None}


def _tokens(command: object) -> list[str]:
    """A compose ``command`` / ``healthcheck.test`` as a list of strings."""
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list), f"expected a string or list, got {command!r}"
    return [str(part) for part in command]


def _option(tokens: list[str], name: str) -> str | None:
    """The value of ``--name value`` / ``--name=value`` among command arguments."""
    for i, token in enumerate(tokens):
        if token == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def _listen_address(gateway: dict[str, Any]) -> tuple[str, int]:
    """Where ``gateway serve`` listens in this service: GATEWAY_HOST/PORT (or their defaults),
    overridden by ``--host``/``--port`` in the command, exactly as gateway.cli does."""
    settings: Settings = load_settings(_resolved_environment(gateway))
    args = _tokens(gateway.get("command") or [])
    host = _option(args, "--host") or settings.host
    port = _option(args, "--port")
    return host, int(port) if port is not None else settings.port


def _container_ports(ports: list[Any]) -> set[int]:
    """Container-side TCP ports of a service's ``ports`` (short or long syntax)."""
    found: set[int] = set()
    for entry in ports:
        if isinstance(entry, dict):
            if str(entry.get("protocol", "tcp")) == "tcp":
                found.add(int(entry["target"]))
            continue
        spec, _, protocol = str(entry).partition("/")
        if protocol not in {"", "tcp"}:
            continue
        target = spec.rsplit(":", 1)[-1]
        first, _, last = target.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


def _healthcheck_tokens(service: dict[str, Any]) -> list[str]:
    check = service.get("healthcheck")
    assert isinstance(check, dict), "no healthcheck"
    assert not check.get("disable"), "healthcheck is disabled"
    tokens = _tokens(check.get("test") or [])
    assert tokens, "healthcheck has no test"
    assert tokens[0] != "NONE", "healthcheck test is NONE (disabled)"
    return tokens


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a line continuation"
    return instructions


def _dockerfile_args(keyword: str) -> list[str]:
    return [args for kw, args in _dockerfile_instructions() if kw == keyword]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _dockerfile_args("ENV"):
        tokens = shlex.split(args)
        if all("=" in token for token in tokens):
            for token in tokens:
                key, _, value = token.partition("=")
                env[key] = value
        else:  # legacy `ENV KEY value with spaces`
            env[tokens[0]] = " ".join(tokens[1:])
    return env


def _exec_form(keyword: str) -> list[str]:
    """The last ``keyword`` instruction, which must be in JSON (exec) form."""
    found = _dockerfile_args(keyword)
    assert found, f"Dockerfile has no {keyword}"
    try:
        value = json.loads(found[-1])
    except json.JSONDecodeError:
        pytest.fail(f"{keyword} {found[-1]} is in shell form; use exec form [\"...\"]")
    assert isinstance(value, list), f"{keyword} must be a JSON list"
    assert all(isinstance(part, str) for part in value), f"{keyword} must list strings"
    return [str(part) for part in value]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(compose, dict), "docker-compose.yml is not a mapping"
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    for name, service in found.items():
        assert isinstance(service, dict), f"service {name} is not a mapping"
    return found


@pytest.fixture(scope="module")
def gateway(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    assert "gateway" in services, "no gateway service"
    return services["gateway"]


@pytest.fixture(scope="module")
def postgres(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    assert "postgres" in services, "no postgres service"
    return services["postgres"]


# --------------------------------------------------------------------------- compose


def test_gateway_service_sets_only_variables_the_gateway_reads(gateway: dict[str, Any]) -> None:
    unknown = sorted(set(_environment(gateway)) - set(KNOWN_VARIABLES))
    assert not unknown, f"not in gateway.config.SETTINGS, the gateway ignores: {unknown}"


def test_gateway_service_variable_values_parse_with_their_settings(
    gateway: dict[str, Any],
) -> None:
    env = _resolved_environment(gateway)
    assert env, "the gateway service sets no environment"
    # One at a time, so a failure names the variable; then all together, as the gateway does.
    for name, value in env.items():
        if name in KNOWN_VARIABLES:
            load_settings({name: value})
    load_settings(env)


def test_gateway_service_requires_an_admin_key_from_the_shell(gateway: dict[str, Any]) -> None:
    # Unset, `gateway serve` would invent a key per start, printed only to the log.
    value = _environment(gateway).get("GATEWAY_ADMIN_KEY")
    assert value is not None, "GATEWAY_ADMIN_KEY is not passed to the gateway"
    assert re.fullmatch(r"\$\{GATEWAY_ADMIN_KEY:?\?[^}]*\}", value), (
        f"GATEWAY_ADMIN_KEY={value!r}: expected ${{GATEWAY_ADMIN_KEY:?...}} so compose refuses "
        "to start without it and no key is committed"
    )


def test_gateway_listens_on_all_interfaces_so_the_published_port_reaches_it(
    gateway: dict[str, Any],
) -> None:
    host, _ = _listen_address(gateway)
    assert host == "0.0.0.0", f"gateway listens on {host}, unreachable through a published port"


def test_gateway_publishes_the_port_it_listens_on(gateway: dict[str, Any]) -> None:
    _, port = _listen_address(gateway)
    published = _container_ports(gateway.get("ports") or [])
    assert port in published, f"gateway listens on {port} but publishes {sorted(published)}"


def test_gateway_runs_serve_with_its_dispatcher(gateway: dict[str, Any]) -> None:
    # The only gateway service: without its dispatcher no delivery would ever go out.
    args = _tokens(gateway.get("command") or ["serve"])  # the image's CMD is `serve`
    assert args[:1] == ["serve"], f"gateway command is {args}, expected serve"
    assert "--no-dispatcher" not in args


def test_gateway_service_is_built_from_this_dockerfile(gateway: dict[str, Any]) -> None:
    build = gateway.get("build")
    if isinstance(build, dict):
        context = str(build.get("context", "."))
        dockerfile = str(build.get("dockerfile", "Dockerfile"))
    else:
        context, dockerfile = str(build), "Dockerfile"
    assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == DOCKERFILE.resolve()


def test_database_url_targets_the_postgres_service_with_its_credentials(
    services: dict[str, dict[str, Any]], gateway: dict[str, Any], postgres: dict[str, Any]
) -> None:
    url = _resolved_environment(gateway).get("DATABASE_URL")
    assert url, "DATABASE_URL is not set: the gateway would start an embedded PostgreSQL"
    parts = urlsplit(url)
    pg_env = _resolved_environment(postgres)
    assert parts.scheme in {"postgresql", "postgres"}, url
    postgres_name = next(name for name, svc in services.items() if svc is postgres)
    assert parts.hostname == postgres_name, f"{url} does not point at service {postgres_name}"
    assert (parts.port or 5432) == 5432, f"{url}: the postgres image listens on 5432"
    assert unquote(parts.username or "") == pg_env.get("POSTGRES_USER"), url
    assert unquote(parts.password or "") == pg_env.get("POSTGRES_PASSWORD"), url
    assert unquote(parts.path.lstrip("/")) == pg_env.get("POSTGRES_DB"), url


def test_gateway_starts_only_once_postgres_is_healthy(gateway: dict[str, Any]) -> None:
    depends_on = gateway.get("depends_on")
    assert isinstance(depends_on, dict), (
        f"depends_on={depends_on!r}: the list form only waits for the container to start"
    )
    condition = (depends_on.get("postgres") or {}).get("condition")
    assert condition == "service_healthy", f"gateway waits for postgres {condition!r}"


@pytest.mark.parametrize("name", ["postgres", "gateway"])
def test_service_has_an_enabled_healthcheck(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    assert name in services, f"no {name} service"
    _healthcheck_tokens(services[name])


def test_postgres_healthcheck_runs_pg_isready_as_the_configured_user(
    postgres: dict[str, Any],
) -> None:
    command = " ".join(_healthcheck_tokens(postgres))
    assert "pg_isready" in command, command
    # Without -U, pg_isready connects as "root" and the server logs a FATAL every interval.
    user = _resolved_environment(postgres).get("POSTGRES_USER")
    assert user, "POSTGRES_USER is not set"
    assert re.search(rf"(-U\s*|--username[= ]){re.escape(user)}(\s|$)", command), command


def test_gateway_healthcheck_requests_readyz_on_the_listen_port(
    gateway: dict[str, Any],
) -> None:
    _, port = _listen_address(gateway)
    command = " ".join(_healthcheck_tokens(gateway))
    urls = [urlsplit(u) for u in _URL.findall(command)]
    assert any(
        u.hostname in {"127.0.0.1", "localhost"} and u.port == port and u.path == "/readyz"
        for u in urls
    ), f"no request to http://127.0.0.1:{port}/readyz in healthcheck: {command}"


def test_postgres_image_is_version_16(postgres: dict[str, Any]) -> None:
    image = str(postgres.get("image", ""))
    reference = image.split("@", 1)[0]
    repository, _, tag = reference.rpartition(":")
    if "/" in tag or not repository:  # "host:port/name" without a tag
        repository, tag = reference, "latest"
    assert repository.rsplit("/", 1)[-1] == "postgres", image
    assert re.match(r"16(\b|$)", tag), f"{image}: the gateway targets PostgreSQL 16"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_exposes_the_default_gateway_port() -> None:
    exposed = {
        int(port.split("/")[0])
        for args in _dockerfile_args("EXPOSE")
        for port in args.split()
        if port.partition("/")[2] in {"", "tcp"}
    }
    assert DEFAULT_PORT in exposed, f"EXPOSE {sorted(exposed)}, GATEWAY_PORT default {DEFAULT_PORT}"


def test_dockerfile_entrypoint_is_the_gateway_console_script_in_exec_form() -> None:
    with PYPROJECT.open("rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts.get("gateway") == "gateway.cli:main"
    # Exec form: the console script is PID 1 and gets SIGTERM for its graceful drain.
    assert _exec_form("ENTRYPOINT") == ["gateway"]


def test_dockerfile_default_command_is_serve() -> None:
    assert _exec_form("CMD") == ["serve"]


def test_dockerfile_gateway_variables_are_ones_the_gateway_reads_and_parse() -> None:
    env = {
        k: v for k, v in _dockerfile_env().items()
        if k.startswith("GATEWAY_") or k == "DATABASE_URL"
    }
    unknown = sorted(set(env) - set(KNOWN_VARIABLES))
    assert not unknown, f"the gateway reads no such variable: {unknown}"
    for name, value in env.items():
        load_settings({name: value})


def test_dockerfile_image_listens_on_all_interfaces() -> None:
    assert load_settings(_dockerfile_env()).host == "0.0.0.0"


def test_dockerfile_healthcheck_requests_readyz() -> None:
    checks = _dockerfile_args("HEALTHCHECK")
    assert checks, "Dockerfile has no HEALTHCHECK"
    assert not checks[-1].upper().startswith("NONE"), "HEALTHCHECK NONE disables it"
    assert "/readyz" in checks[-1], checks[-1]


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = _dockerfile_args("USER")
    assert users, "no USER: the gateway (and embedded PostgreSQL) would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"USER {users[-1]}"


def test_gateway_is_published_on_loopback_unless_told_otherwise(
        gateway: dict[str, Any]) -> None:
    for entry in gateway.get("ports") or []:
        assert isinstance(entry, str), "use the short syntax, with a host address"
        host = _resolve(entry).rsplit(":", 2)[0]
        assert host == "127.0.0.1", f"{entry} publishes beyond this host by default"


def test_compose_protects_metrics_with_a_key_from_the_shell(gateway: dict[str, Any]) -> None:
    raw = _environment(gateway).get("GATEWAY_METRICS_KEY")
    assert raw is not None and raw.startswith("${GATEWAY_METRICS_KEY:?"), raw


def test_dockerfile_keeps_its_data_on_a_volume() -> None:
    volumes = " ".join(_dockerfile_args("VOLUME"))
    data_dir = _dockerfile_env()["GATEWAY_DATA_DIR"]
    assert data_dir in volumes, f"VOLUME {volumes!r} does not hold {data_dir}"


def test_dockerfile_installs_the_locked_dependencies_with_hashes() -> None:
    runs = " ".join(_dockerfile_args("RUN"))
    assert "--require-hashes" in runs and "-r requirements.lock" in runs
    assert "--no-deps ." in runs, "the gateway must not resolve dependencies again"


def test_the_lock_pins_every_server_dependency_within_its_declared_bounds() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.lock")
                           .read_text(), re.MULTILINE))
    pins = {canonicalize_name(k): v for k, v in pins.items()}
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = [Requirement(r) for r in [*project["dependencies"],
                                       *project["optional-dependencies"]["server"]]]
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate({"sys_platform": "linux"}):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(pinned), f"{req.name}=={pinned} is outside {req}"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".gateway", "tests"} <= ignored
