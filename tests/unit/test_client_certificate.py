"""A push certificate becomes a TLS client certificate without its private key being
left in a file: from an anonymous memfd where the platform has one, else from a private
temporary file removed as soon as it was read."""

from __future__ import annotations

import os
import ssl
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from adapters.apns import load_client_certificate
from tests.push_support import PushCertificates


class _Watched(ssl.SSLContext):
    """Notes where ``load_cert_chain`` read from, and that file's permissions then."""

    seen: list[tuple[str, int | None]]

    def load_cert_chain(self, certfile: Any, keyfile: Any = None, password: Any = None,
                        ) -> None:
        path = str(certfile)
        mode = None if path.startswith("/proc/") else stat.S_IMODE(os.stat(path).st_mode)
        self.seen.append((path, mode))
        super().load_cert_chain(certfile, keyfile, password)


def _watched() -> _Watched:
    context = _Watched(ssl.PROTOCOL_TLS_CLIENT)
    context.seen = []
    return context


@pytest.fixture(scope="module")
def pem() -> str:
    return PushCertificates().issue("com.example.shop")


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd is Linux-only")
def test_a_client_certificate_is_loaded_from_memory_where_there_is_a_memfd(
    pem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    context = _watched()
    load_client_certificate(context, pem)
    ((path, _),) = context.seen
    assert path.startswith("/proc/self/fd/")
    assert list(tmp_path.iterdir()) == []


def test_without_a_memfd_the_certificate_file_is_private_and_removed_at_once(
    pem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    context = _watched()
    load_client_certificate(context, pem)
    ((path, mode),) = context.seen
    assert Path(path).parent == tmp_path and mode == 0o600
    assert list(tmp_path.iterdir()) == []


def test_a_certificate_that_does_not_load_leaves_no_file_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ssl.SSLError):
        load_client_certificate(_watched(), "-----BEGIN CERTIFICATE-----\n-----END "
                                "CERTIFICATE-----\n")
    assert list(tmp_path.iterdir()) == []
