"""Loaded by every Python process that bench_workers.py starts (its PYTHONPATH leads here): times the
study lock, which no server counter shows. Writes one JSON per process to $SWEEPLAB_BENCH_PROBE at exit.

Nothing in sweeplab changes: SQLAlchemy's class-level events see every engine the process builds, and the
lock is the one statement pair `pg_advisory_lock` / `pg_advisory_unlock` (hydra_plugins/.../storage.py).
"""

import os

if os.environ.get("SWEEPLAB_BENCH_PROBE"):
    import atexit
    import json
    import time
    from pathlib import Path

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    _stats = {"statements": 0, "statement_s": 0.0, "locks": []}  # locks: [taken at (epoch s), wait s, held s]

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):
        conn.info["bench_t0"] = time.perf_counter()
        if "pg_advisory_unlock(" in statement and "bench_lock" in conn.info:
            lock = conn.info.pop("bench_lock")
            _stats["locks"].append([lock[0], lock[1], conn.info["bench_t0"] - lock[2]])

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):
        now = time.perf_counter()
        took = now - conn.info.pop("bench_t0", now)
        _stats["statements"] += 1
        _stats["statement_s"] += took  # client side: round trip + driver, commits not included
        if "pg_advisory_lock(" in statement:  # its time is mostly waiting for the lock to be free
            conn.info["bench_lock"] = (time.time(), took, now)

    @atexit.register
    def _write():
        out = Path(os.environ["SWEEPLAB_BENCH_PROBE"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{os.getpid()}.json").write_text(json.dumps(_stats))
