"""Find the study: a name in the default storage or a storage URL; refuse what cannot be read.

Every refusal is a ReportError whose message names the thing and what is allowed. Nothing here
creates a database: SQLAlchemy would make an empty SQLite file for a typo'd path, and Optuna would
add its tables to any database it opens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sweeplab.errors import SweeplabError
from sweeplab.secrets import redact_text

if TYPE_CHECKING:
    import optuna
    from sqlalchemy.engine import URL

# Optuna's RDB storage is tested on these; anything else is almost surely a typo.
BACKENDS = ("sqlite", "postgresql", "mysql")
EXAMPLES = "sqlite:///path/to/optuna.db, postgresql://user:pass@host/db or mysql://user:pass@host/db"
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
TIMEOUT_DRIVERS = ("psycopg", "psycopg2", "mysqldb", "pymysql")  # those that take connect_timeout


class ReportError(SweeplabError):
    """The report cannot start; the CLI prints the message as one line and exits 2."""


def output_root() -> Path:
    """The same root as the `paths` config group: $SWEEPLAB_OUTPUT_ROOT or ./outputs."""
    return Path(os.environ.get("SWEEPLAB_OUTPUT_ROOT") or "outputs")


def default_storage() -> str:
    """Where the qlora sweep writes its study by default (conf/hparams_search/qlora.yaml)."""
    return f"sqlite:///{output_root() / 'sweeps' / 'optuna.db'}"


def mask(url: str) -> str:
    """user:secret@host -> user:***@host, for anything printed or written."""
    return redact_text(url)


def looks_like_storage(target: str) -> bool:
    return "://" in target


def check_url(url: str) -> URL:
    """Scheme and, for SQLite, the file; before any engine exists, so nothing is created."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ReportError(f"storage {mask(url)!r} is not a database URL; use {EXAMPLES}") from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise ReportError(
            f"storage {mask(url)}: scheme '{parsed.drivername}' is not supported; "
            f"use one of {', '.join(BACKENDS)}: {EXAMPLES}"
        )
    if backend != "sqlite":
        return parsed
    database = parsed.database or ""
    if parsed.query.get("uri") == "true":
        database = database.removeprefix("file:")
    if database in ("", ":memory:"):
        raise ReportError(
            f"storage {mask(url)} is an in-memory SQLite database; give a file: sqlite:///path.db"
        )
    path = Path(database)
    if not path.is_file():
        hint = " (no sweep has written there yet; pass --storage URL)" if url == default_storage() else ""
        raise ReportError(f"storage {mask(url)}: SQLite file {path} does not exist{hint}")
    with open(path, "rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise ReportError(f"storage {mask(url)}: {path} is not an SQLite database")
    return parsed


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Connect read-mostly: refuse a database without Optuna's tables instead of adding them."""
    import optuna
    import sqlalchemy
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    parsed = check_url(url)
    connect_args = {}
    if parsed.get_driver_name() in TIMEOUT_DRIVERS and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = 10  # s; an unreachable host otherwise waits for the TCP timeout
    engine = None
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
        with engine.connect() as conn:
            has_studies = sqlalchemy.inspect(conn).has_table("studies")
    except NoSuchModuleError as err:
        raise ReportError(f"storage {mask(url)}: {err}; use {EXAMPLES}") from None
    except ImportError as err:
        raise ReportError(
            f"storage {mask(url)}: the {parsed.get_backend_name()} driver '{err.name}' is not installed "
            "in this environment; pip install it (PostgreSQL: 'psycopg[binary]')"
        ) from None
    except SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise ReportError(f"storage {mask(url)}: cannot connect: {reason}") from None
    finally:
        if engine is not None:
            engine.dispose()
    if not has_studies:
        raise ReportError(f"storage {mask(url)} holds no Optuna studies (it has no 'studies' table)")
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except (RuntimeError, SQLAlchemyError) as err:  # schema newer/older than this optuna
        raise ReportError(f"storage {mask(url)}: {str(err).strip().splitlines()[0]}") from None


def resolve(target: str | None, storage: str | None) -> tuple[str, str | None]:
    """(storage URL, study name or None) from the positional argument and --storage."""
    if target and storage is None and target.endswith(SQLITE_SUFFIXES) and Path(target).is_file():
        target = f"sqlite:///{target}"  # a plain path to the .db file is a storage too
    if target is not None and looks_like_storage(target):
        if storage is not None:
            raise ReportError(f"got two storages ({mask(target)} and --storage {mask(storage)}); give one")
        return target, None
    return storage or default_storage(), target


def load(target: str | None, storage_url: str | None) -> tuple[optuna.Study, str]:
    """The study and the URL it came from; one study in a storage is picked without a name."""
    import optuna

    url, name = resolve(target, storage_url)
    storage = open_storage(url)
    names = sorted(s.study_name for s in storage.get_all_studies())
    if not names:
        raise ReportError(f"storage {mask(url)} holds no studies")
    if name is None:
        if len(names) > 1:
            raise ReportError(
                f"storage {mask(url)} holds {len(names)} studies: {', '.join(names)}; "
                f"name one: python -m sweeplab.report NAME --storage {mask(url)}"
            )
        name = names[0]
    elif name not in names:
        raise ReportError(f"no study '{name}' in {mask(url)}; studies there: {', '.join(names)}")
    return optuna.load_study(study_name=name, storage=storage), url
