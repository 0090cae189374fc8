"""A throwaway PostgreSQL cluster on loopback with password auth, for the storage tests and bench_workers.

`make test` installs the server binaries (scripts/ensure-postgres.sh); without them `available()` is False.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def available() -> bool:
    return bool(pg_bin("initdb") and pg_bin("pg_ctl"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    ctl: Callable[..., None]  # pg_ctl ARGS on this cluster: ctl("restart", "-m", "fast")


@contextlib.contextmanager
def running(password: str, settings: tuple[str, ...] = ()) -> Iterator[Server]:
    """A new cluster with database `sweeps`, stopped and deleted on exit. `settings` are server options
    (`-c name=value` each), e.g. ("shared_preload_libraries=pg_stat_statements",)."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # postgres refuses root
    home = Path(tempfile.mkdtemp(prefix="sweeplab-pg-"))
    data, port = home / "data", free_port()
    (home / "pw").write_text(password)
    if as_postgres:
        shutil.chown(home, "postgres")
        shutil.chown(home / "pw", "postgres")
    run = lambda *cmd: subprocess.run([*as_postgres, *cmd], check=True, capture_output=True)  # noqa: E731
    run(initdb, "-D", str(data), "-U", "sweeplab", f"--pwfile={home / 'pw'}", "--auth=scram-sha-256")
    opts = " ".join([f"-p {port} -k {home} -c listen_addresses=127.0.0.1", *(f"-c {s}" for s in settings)])
    ctl = lambda *args: run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(home / "log"), "-w", *args)  # noqa: E731
    ctl("start")
    try:
        base = f"postgresql+psycopg://sweeplab:{password}@127.0.0.1:{port}"
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("CREATE DATABASE sweeps"))
        engine.dispose()
        yield Server(f"{base}/sweeps", ctl)
    finally:
        subprocess.run(
            [*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(home, ignore_errors=True)
