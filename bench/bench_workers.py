"""What many workers cost one PostgreSQL: round trips, server time, connections and the sweeper's own time.

    .venv/bin/python bench/bench_workers.py --out BENCHMARKS.md            (make bench-workers, ~20 min)
    .venv/bin/python bench/bench_workers.py --workers 8 --out BENCHMARKS.md  # rerun one arm

Each arm sweeps --trials trials of bench/sleep_app (a trial that sleeps --seconds and reports --reports
values through sweeplab's pruning API: ask, reports, should_prune, tell, one heartbeat) with
hydra.sweeper.n_jobs workers on a throwaway PostgreSQL (tests/pg_server.py), in a database of its own.
The trial only sleeps so that the workers never fight for the 2 cores: the cost measured is the
sweeper's and the storage's, not training's.

Counted per arm:
- on the server, which needs no change to sweeplab: pg_stat_statements (every statement a client sent,
  transaction control included: one round trip each; execution time; the advisory lock's statements
  apart, since their time is waiting, not work) and pg_stat_database (transactions, sessions opened,
  rows); pg_stat_activity sampled every 0.2 s for the connections held;
- in the workers, by bench/workers_probe/sitecustomize.py (SQLAlchemy events, nothing in sweeplab
  changes): how long each worker waited for the study lock and held it;
- by the trial itself (work.json in its run dir): when its work started and ended, and its time in
  report(). The sweeper's own time is the rest of each worker's wall time.
Each arm's result is kept as bench/workers/<n>.json; a rerun runs only what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy

from benchmarks_md import cpu_name, replace_section  # bench/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests import pg_server  # noqa: E402 - the tests' throwaway server, one copy of that code

START, END = "<!-- bench_workers:start -->", "<!-- bench_workers:end -->"
APP = ROOT / "bench" / "sleep_app" / "sleep.py"
PROBE = ROOT / "bench" / "workers_probe"
PASSWORD = "bench-workers"
SERVER_SETTINGS = ("shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all")
HEARTBEAT_INTERVAL = 30  # the sweeper's default; a trial beats once at its start, then every interval
LOCK_SQL = ("pg_advisory_lock", "pg_advisory_unlock", "pg_backend_pid")
SCHEMA_SQL = ("CREATE", "ALTER", "DROP")
TRANSACTION_SQL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def admin(url: str) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")


def fresh_database(engine: sqlalchemy.Engine, name: str) -> None:
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        conn.execute(sqlalchemy.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        conn.execute(sqlalchemy.text("SELECT pg_stat_statements_reset()"))


class ConnectionSampler(threading.Thread):
    """Connections to the arm's database (all, and those running a statement) every `period` s."""

    def __init__(self, engine: sqlalchemy.Engine, database: str, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.engine, self.database, self.period = engine, database, period
        self.samples: list[tuple[int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        query = sqlalchemy.text(
            "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
            "WHERE datname = :db"
        )
        with self.engine.connect() as conn:
            while not self.done.wait(self.period):
                self.samples.append(tuple(conn.execute(query, {"db": self.database}).one()))

    def summary(self) -> dict:
        held = [s[0] for s in self.samples] or [0]
        active = [s[1] for s in self.samples] or [0]
        return {
            "samples": len(self.samples),
            "held_max": max(held),
            "held_mean": statistics.fmean(held),
            "active_max": max(active),
            "active_mean": statistics.fmean(active),
        }


def sweep_command(url: str, workers: int, args: argparse.Namespace, sweep_dir: Path) -> list[str]:
    return [
        sys.executable, str(APP), "--multirun",
        f"hydra.sweeper.storage={url}", f"hydra.sweeper.n_jobs={workers}",
        f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.heartbeat_interval={HEARTBEAT_INTERVAL}",
        "hydra.sweeper.sampler.seed=0", f"hydra.sweep.dir={sweep_dir}",
        f"seconds={args.seconds}", f"reports={args.reports}",
    ]  # fmt: skip


def run_sweep(cmd: list[str], probe_dir: Path, log: Path) -> float:
    """Wall seconds of the whole sweep (worker 0 starts and waits for the others)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROBE), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "SWEEPLAB_BENCH_PROBE": str(probe_dir),
        "OMP_NUM_THREADS": "1",
    }
    t0 = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"the sweep failed ({done.returncode}); the end of {log}:\n{tail}")
    return wall


def statement_kind(query: str) -> str:
    if any(s in query for s in LOCK_SQL):
        return "lock"
    if query.lstrip().upper().startswith(SCHEMA_SQL) or "alembic_version" in query:
        return "schema"  # once per study: left out of the per-trial figures
    if query.lstrip().upper().startswith(TRANSACTION_SQL):
        return "transaction"
    if "trial_heartbeats" in query:
        return "heartbeat"
    return "query"


def server_counters(engine: sqlalchemy.Engine, database: str) -> dict:
    """pg_stat_statements per kind of statement, and pg_stat_database, for the arm's database."""
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_stat_clear_snapshot()"))
        rows = conn.execute(
            sqlalchemy.text(
                "SELECT query, calls, total_exec_time, total_plan_time, rows FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = :db"
            ),
            {"db": database},
        ).all()
        db = conn.execute(
            sqlalchemy.text(
                "SELECT xact_commit, xact_rollback, sessions, active_time, session_time, tup_returned, "
                "tup_fetched, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
                "WHERE datname = :db"
            ),
            {"db": database},
        ).one()
    kinds: dict[str, dict] = {}
    for query, calls, exec_ms, plan_ms, n_rows in rows:
        k = kinds.setdefault(statement_kind(query), {"calls": 0, "ms": 0.0, "rows": 0})
        k["calls"] += calls
        k["ms"] += exec_ms + plan_ms
        k["rows"] += n_rows
    heaviest = sorted(rows, key=lambda r: -r[2])[:6]
    return {
        "statements": kinds,
        "heaviest": [{"query": q[:160], "calls": c, "ms": round(ms, 1)} for q, c, ms, _, _ in heaviest],
        "database": dict(db._mapping),
    }


def server_limits(url: str, engine: sqlalchemy.Engine, tries: int = 20) -> dict:
    """max_connections, and what opening one session costs (the lock opens one per section): the median
    of `tries` connects + first query from here, client time, so an upper bound on the server's part."""
    with engine.connect() as conn:
        max_connections = int(conn.execute(sqlalchemy.text("SHOW max_connections")).scalar_one())
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    times = []
    for _ in range(tries):
        t0 = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT 1")
        times.append(time.perf_counter() - t0)
    return {"max_connections": max_connections, "connect_ms": 1000 * statistics.median(times)}


def trial_work(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/work.json"))]


def sweeper_gaps(work: list[dict]) -> list[float]:
    """Seconds between one trial's end and the next one's start in the same worker: the sweeper's own
    time per trial once running (tell, lock, ask, Hydra's job set-up), with no start-up in it."""
    by_worker: dict[int, list[dict]] = {}
    for w in work:
        by_worker.setdefault(w["pid"], []).append(w)
    gaps = []
    for trials in by_worker.values():
        trials.sort(key=lambda w: w["start"])
        gaps += [b["start"] - a["end"] for a, b in zip(trials, trials[1:], strict=False)]
    return gaps


def probes(probe_dir: Path) -> dict:
    """The study lock over every process of the arm (one at a time holds it): waits and holds."""
    statements, locks = 0, []
    for p in probe_dir.glob("*.json"):
        stats = json.loads(p.read_text())
        statements += stats["statements"]
        locks += stats["locks"]
    locks.sort()  # by the time each was taken
    held = [h for _, _, h in locks]
    last = held[-max(len(held) // 4, 1) :] if held else [0.0]  # the study nearly full
    return {
        "client_statements": statements,
        "locks": len(locks),
        "wait_s": sum(w for _, w, _ in locks),
        "wait_median_s": statistics.median(w for _, w, _ in locks) if locks else 0.0,
        "held_s": sum(held),
        "held_median_s": statistics.median(held) if held else 0.0,
        "held_last_quarter_median_s": statistics.median(last),
        "held_last_quarter_mean_s": statistics.fmean(last),
    }


def study_states(url: str, study: str) -> dict[str, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study, storage=url).trials
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return states


def run_arm(url: str, workers: int, args: argparse.Namespace) -> dict:
    database = f"arm{workers}"
    engine = admin(url)
    fresh_database(engine, database)
    arm_url = url.rsplit("/", 1)[0] + f"/{database}"
    workdir = args.workdir / f"workers-{workers}"
    subprocess.run(["rm", "-rf", str(workdir)], check=True)
    workdir.mkdir(parents=True)
    sampler = ConnectionSampler(engine, database)
    load_before = os.getloadavg()[0]  # other work on the machine shares the cores with the workers
    sampler.start()
    try:
        wall = run_sweep(
            sweep_command(arm_url, workers, args, workdir / "sweep"), workdir / "probe", workdir / "sweep.log"
        )
    finally:
        sampler.done.set()
        sampler.join()
    time.sleep(1.0)  # backends flush their counters at exit, at most ~1 s late
    result = {
        "workers": workers,
        "trials": args.trials,
        "seconds": args.seconds,
        "reports": args.reports,
        "heartbeat_interval": HEARTBEAT_INTERVAL,
        "wall_s": wall,
        "load_1min": [load_before, os.getloadavg()[0]],
        "states": study_states(arm_url, "sleep"),
        "connections": sampler.summary(),
        "server": server_counters(engine, database),
        "lock": probes(workdir / "probe"),
        "limits": server_limits(url, engine),
    }
    work = trial_work(workdir / "sweep")
    gaps = sweeper_gaps(work)
    result["work"] = {
        "trials": len(work),
        "work_s": sum(w["end"] - w["start"] for w in work),
        "in_reports_s": sum(w["in_reports"] for w in work),
        "gap_median_s": statistics.median(gaps) if gaps else None,
        "gap_p90_s": statistics.quantiles(gaps, n=10)[-1] if len(gaps) >= 10 else None,
    }
    engine.dispose()
    return result


def per_trial(r: dict) -> dict:
    """One arm's figures per trial (and per minute), the table's and the estimate's."""
    n = r["trials"]
    st = r["server"]["statements"]
    get = lambda kind, key: st.get(kind, {}).get(key, 0)  # noqa: E731
    per_trial_kinds = [kind for kind in st if kind != "schema"]
    round_trips = sum(st[kind]["calls"] for kind in per_trial_kinds)
    # The lock's statements take microseconds of work; the rest of their time is waiting.
    busy_ms = sum(st[kind]["ms"] for kind in per_trial_kinds if kind != "lock")
    worker_s = r["workers"] * r["wall_s"]
    lock, db = r["lock"], r["server"]["database"]
    return {
        "round_trips": round_trips / n,
        "transactions": (db["xact_commit"] + db["xact_rollback"]) / n,
        "sessions": db["sessions"] / n,
        "server_ms": busy_ms / n,
        "heartbeat_calls": get("heartbeat", "calls") / n,
        "heartbeat_ms": get("heartbeat", "ms") / n,
        "lock_wait_s": lock["wait_s"] / n,
        "lock_held_s": lock["held_s"] / n,  # lock seconds per trial: the serial part of the sweep
        "lock_held_late_s": lock["held_last_quarter_mean_s"],
        "locks": lock["locks"] / n,
        "sweeper_s": (worker_s - r["trials"] * r["seconds"]) / n,  # every worker-second not spent sleeping
        "gap_s": r["work"]["gap_median_s"],
        "in_reports_s": r["work"]["in_reports_s"] / n,
        "per_min": 60 * n / r["wall_s"],
        "ideal_per_min": 60 * r["workers"] / r["seconds"],
        "round_trips_per_s": round_trips / r["wall_s"],
        "server_ms_per_s": busy_ms / r["wall_s"],
    }


def table(results: list[dict]) -> list[str]:
    rows = [
        "| workers | trials/min (ideal) | of ideal | round trips / trial | server ms / trial "
        "| sessions / trial | connections held max (mean) | sweeper s / trial (gap median) "
        "| lock wait s (held s) / trial | lock busy | wall s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        p = per_trial(r)
        c = r["connections"]
        cells = [
            r["workers"],
            f"{p['per_min']:.1f} ({p['ideal_per_min']:.1f})",
            f"{100 * p['per_min'] / p['ideal_per_min']:.0f}%",
            f"{p['round_trips']:.0f}",
            f"{p['server_ms']:.1f}",
            f"{p['sessions']:.1f}",
            f"{c['held_max']} ({c['held_mean']:.1f})",
            f"{p['sweeper_s']:.2f} ({p['gap_s']:.2f})",
            f"{p['lock_wait_s']:.3f} ({p['lock_held_s']:.3f})",
            f"{100 * r['lock']['held_s'] / r['wall_s']:.0f}%",  # of the wall time, someone held it
            f"{r['wall_s']:.0f}",
        ]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return rows


RESERVED_CONNECTIONS = 3  # superuser_reserved_connections: not for the workers


def estimate(results: list[dict]) -> list[str]:
    """On paper: workers one PostgreSQL carries for trials of 5 min and 1 h, from the largest arm."""
    r = max(results, key=lambda r: r["workers"])
    p = per_trial(r)
    beat_ms = p["heartbeat_ms"]  # one beat per trial here (at its start)
    # Statements, plus each new session's handshake at its measured (client-side, so upper) cost.
    handshake_ms = p["sessions"] * r["limits"]["connect_ms"]
    fixed_ms = p["server_ms"] - beat_ms + handshake_ms
    # Lock seconds per trial once running (one section a trial, the study 150-200 trials full): only
    # one worker at a time holds it, whatever the server's cores. Its time is the worker's own CPU work
    # (Optuna's ask over every trial): alone (the 1-worker arm) and sharing the cores (the largest arm).
    alone = min(results, key=lambda r: r["workers"])
    held_alone, held = per_trial(alone)["lock_held_late_s"], p["lock_held_late_s"]
    cores = os.cpu_count() or 1
    per_worker = r["connections"]["held_max"] / r["workers"]
    slots = r["limits"]["max_connections"] - RESERVED_CONNECTIONS
    by_connections = slots / per_worker
    lines = [
        f"From the {r['workers']}-worker arm ({r['trials']} trials in one study), three limits:",
        "",
        f"- **server CPU**: per trial {p['server_ms'] - beat_ms:.1f} ms of statements (pg_stat_statements "
        f"execution + planning, lock waits left out) + {p['sessions']:.1f} new sessions x "
        f"{r['limits']['connect_ms']:.1f} ms = {fixed_ms:.1f} ms, plus {beat_ms:.2f} ms per heartbeat "
        f"(one every {HEARTBEAT_INTERVAL} s); workers at 50% of the server's {cores} cores = "
        "0.5 x cores x trial length / server time per trial.",
        f"- **the study lock**: each trial held it {held * 1000:.0f} ms here (mean over the arm's last "
        f"quarter of sections; {p['lock_held_s'] * 1000:.0f} ms per trial over the whole arm, start-up "
        f"included), {held_alone * 1000:.0f} ms in the {alone['workers']}-worker arm where no other worker "
        "shared the cores, for the fail-stale check, the count and Optuna's ask; one worker at a time, "
        "so at 50% busy: 0.5 x trial length / lock time per trial (here / alone).",
        f"- **connections**: {r['connections']['held_max']} held at most by {r['workers']} workers = "
        f"{per_worker:.1f} per worker (the sweeper's pool and heartbeat, the trial's own storage, the lock's "
        f"session); max_connections {r['limits']['max_connections']} - {RESERVED_CONNECTIONS} reserved = "
        f"{slots} / {per_worker:.1f} = **{by_connections:.0f} workers**, whatever the trial length "
        "(raise max_connections, or put PgBouncer in front, beyond that).",
        "",
        "| trial length | heartbeats / trial | server ms / trial | workers by server CPU "
        "| workers by the study lock | workers by connections |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, seconds in (("5 min", 300), ("1 h", 3600)):
        beats = 1 + seconds // HEARTBEAT_INTERVAL
        server_ms = fixed_ms + beats * beat_ms
        by_server = 0.5 * cores * seconds * 1000 / server_ms
        by_lock, by_lock_alone = 0.5 * seconds / held, 0.5 * seconds / held_alone
        lines.append(
            f"| {label} | {beats} | {fixed_ms:.1f} + {beats} x {beat_ms:.2f} = {server_ms:.1f} | "
            f"0.5 x {cores} x {seconds} s / {server_ms / 1000:.3f} s = {by_server:,.0f} | "
            f"0.5 x {seconds} s / {held:.3f} s = {by_lock:,.0f} (/ {held_alone:.3f} s = "
            f"{by_lock_alone:,.0f}) | {by_connections:.0f} |"
        )
    return lines


def write_section(args: argparse.Namespace, results: list[dict], rows: list[str], notes: list[str]) -> None:
    r0 = results[0]
    section = f"""{START}
## Many workers on one PostgreSQL: what the sweeper and the storage cost

`python bench/bench_workers.py` (`make bench-workers`): {r0["trials"]} trials per arm of
`bench/sleep_app/sleep.py`, a Hydra app swept by sweeplab whose trial sleeps {r0["seconds"]} s in
{r0["reports"]} steps and reports a value after each through `sweeplab.sweep.job.report` (median pruner:
every report stores a value and reads the finished trials; it never prunes here, the values being the same
for every trial), with `hydra.sweeper.n_jobs` workers on one local PostgreSQL 15, one database per arm.
Sleep, not training: on 2 cores, 8 training workers would measure the CPU, not the sweeper. Ideal =
workers / {r0["seconds"]} s. Round trips and server time are the server's own counters (pg_stat_statements:
every statement, BEGIN/COMMIT included, one round trip each; execution + planning ms); sessions are new
connections (pg_stat_database), each a TCP + SCRAM handshake; connections held were sampled from
pg_stat_activity every 0.2 s; lock wait and hold come from SQLAlchemy events in the workers
(`bench/workers_probe/`). Sweeper s / trial = (workers x wall - trials x sleep) / trials: everything a
worker did that was not the trial's sleep (start-up, Hydra's job set-up, the lock, ask, tell, reports);
the gap median is the same between two trials of one worker, start-up left out.

{chr(10).join(rows)}

{chr(10).join(notes)}

{chr(10).join(estimate(results))}

{verdict(results)}

What this rests on: one study of {r0["trials"]} trials (Optuna's ask and the fail-stale check read every
trial of the study, so the lock time grows with the study: a study of thousands of trials holds it
longer); server time is statement execution plus each new session's handshake timed from the client
(an upper bound), not the network; the server shared its {os.cpu_count()} cores with the workers on
loopback{load_caveat(results)} 50%
utilisation is the margin left for queueing. A real trial adds more reports (one per validation) and
more heartbeats (counted above), and W&B or checkpoint writes, which are not storage traffic.

Machine: {os.cpu_count()} cores, {cpu_name()}; tabled {time.strftime("%Y-%m-%d")}. Per-arm results:
`bench/workers/*.json`.
{END}"""
    replace_section(args.out, START, END, section)


def load_caveat(results: list[dict]) -> str:
    """Whether other work shared the cores, from the load averages each arm recorded."""
    cores = os.cpu_count() or 1
    loaded = [str(r["workers"]) for r in results if max(r["load_1min"]) > cores]
    if loaded:
        return (
            f", and other jobs loaded the same cores in the {', '.join(loaded)}-worker arm(s) (a 1-minute "
            "load average above the core count, listed above): their times, the lock's above all, are "
            "inflated by that, counts are not."
        )
    peak = max(max(r["load_1min"]) for r in results)
    return f", and nothing else loaded them (load average at most {peak:.1f}, above)."


def verdict(results: list[dict]) -> str:
    """Which limit comes first, in the measured arms and on paper."""
    r = max(results, key=lambda r: r["workers"])
    busy = 100 * r["lock"]["held_s"] / r["wall_s"]
    p, per_worker = per_trial(r), r["connections"]["held_max"] / r["workers"]
    of_ideal = f"{100 * p['per_min'] / p['ideal_per_min']:.0f}% of ideal"
    if busy >= 50:  # one worker at a time holds it: past half the wall time, it is what they wait on
        measured = (
            f"With {r['seconds']} s trials the study lock already binds at {r['workers']} workers: someone "
            f"held it {busy:.0f}% of the wall time, which is what held that arm to {of_ideal}."
        )
    else:
        measured = (
            f"With {r['seconds']} s trials, {r['workers']} workers ran at {of_ideal}, the study lock held "
            f"{busy:.0f}% of the wall time: not yet the limit at this size; the rest is each worker's own "
            f"time between trials ({p['sweeper_s']:.2f} s per trial)."
        )
    return (
        f"**What comes first.** {measured} For trials of 5 minutes or longer the "
        f"lock leaves room for at least {0.5 * 300 / p['lock_held_late_s']:,.0f} workers and the server's "
        f"CPU for more; the first wall is connections: at {per_worker:.1f} per worker, PostgreSQL's default "
        f"max_connections ({r['limits']['max_connections']}) serves about "
        f"{(r['limits']['max_connections'] - RESERVED_CONNECTIONS) / per_worker:.0f} workers."
    )


def notes(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        p = per_trial(r)
        bad = {k: v for k, v in r["states"].items() if k != "COMPLETE"}
        states = f"{r['states'].get('COMPLETE', 0)} COMPLETE" + (f", other states {bad}" if bad else "")
        lines.append(
            f"- {r['workers']} workers: {states}; per trial {p['transactions']:.0f} transactions, "
            f"{p['heartbeat_calls']:.0f} heartbeat statements, {p['in_reports_s'] * 1000:.0f} ms inside "
            f"report(); the server served {p['round_trips_per_s']:.0f} round trips/s and worked "
            f"{p['server_ms_per_s']:.0f} ms per second of wall time; load average "
            f"{r['load_1min'][0]:.1f} at the start, {r['load_1min'][1]:.1f} at the end."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8", help="arms: workers per sweep")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.5, help="a trial's work (a sleep)")
    parser.add_argument("--reports", type=int, default=5, help="intermediate values per trial")
    parser.add_argument("--keep", type=Path, default=ROOT / "bench" / "workers", help="kept results")
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "bench_workers")
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to update")
    args = parser.parse_args()
    arms = [int(w) for w in args.workers.split(",")]
    missing = [w for w in arms if not (args.keep / f"{w}.json").exists()]
    if missing:
        if not pg_server.available():
            sys.exit("bench_workers: no PostgreSQL server (scripts/ensure-postgres.sh installs one)")
        with pg_server.running(PASSWORD, SERVER_SETTINGS) as server:
            for w in missing:
                print(f"{w} workers: {args.trials} trials of {args.seconds} s", flush=True)
                result = run_arm(server.url, w, args)
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / f"{w}.json").write_text(json.dumps(result, indent=1) + "\n")
    results = [json.loads((args.keep / f"{w}.json").read_text()) for w in arms]
    rows = table(results)
    print("\n".join(rows))
    print("\n".join(estimate(results)))
    if args.out:
        write_section(args, results, rows, notes(results))


if __name__ == "__main__":
    main()
