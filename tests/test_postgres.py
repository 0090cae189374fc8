"""A sweep on a real PostgreSQL server (started here) shared by two workers, with secrets kept out.

The storage URL carries a password and the environment a W&B key and a hub token: none of them
may reach a log line, a logged config or any file under the outputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests import pg_server
from tests.conftest import ROOT
from tests.pg_server import Server
from tests.test_sweep import SMALL

PASSWORD = "pg-Secret-7f3a9c"
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
HF_TOKEN = "hf_NotARealTokenButSecret42"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    """A throwaway PostgreSQL cluster on loopback with password auth; `make test` installs the server."""
    if not pg_server.available():
        pytest.skip(
            "PostgreSQL server binaries not found (make test installs them: scripts/ensure-postgres.sh)"
        )
    with pg_server.running(PASSWORD) as server:
        yield server


@pytest.fixture
def postgres_url(postgres: Server) -> str:
    return postgres.url


def _files_holding(root: Path, secrets: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            hits += [f"{path.relative_to(root)}: {s[:4]}..." for s in secrets if s.encode() in blob]
    return hits


@pytest.mark.slow
def test_two_workers_sweep_on_postgres_and_no_secret_leaks(postgres_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_API_KEY": WANDB_KEY, "HF_TOKEN": HF_TOKEN, "WANDB_MODE": "offline"}
    overrides = [o for o in SMALL if not o.startswith(("logger=", "trainer.max_steps"))]
    result = subprocess.run(
        [sys.executable, "-m", "sweeplab.train", "--multirun", *overrides, "hparams_search=qlora",
         "hydra.sweeper.study_name=pg", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=4",
         "hydra.sweeper.n_jobs=2", f"hydra.sweeper.storage={postgres_url}", "logger=wandb",
         "logger.mode=offline", "trainer.max_steps=8", f"paths.output_root={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    trials = optuna.load_study(study_name="pg", storage=postgres_url).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # no trial ran twice
    assert (tmp_path / "sweeps" / "pg" / "worker-1.log").is_file()

    report = subprocess.run(
        [sys.executable, "-m", "sweeplab.report", "pg", "--storage", postgres_url,
         "--out", str(tmp_path / "report")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    output += report.stdout + report.stderr

    secrets = [PASSWORD, WANDB_KEY, HF_TOKEN]
    assert not [s for s in secrets if s in output], "a secret reached the console"
    assert (
        "sweeplab:***@127.0.0.1" in (tmp_path / "sweeps" / "pg" / "0" / ".hydra" / "hydra.yaml").read_text()
    )
    hits = _files_holding(tmp_path, secrets)
    assert hits == [], hits  # configs, logs, W&B offline runs, report


def _sweep(out: Path, study: str, url: str, *overrides: str) -> list[str]:
    sweep = [o for o in SMALL if not o.startswith("trainer.max_steps")]
    return [
        sys.executable, "-m", "sweeplab.train", "--multirun", *sweep, "hparams_search=qlora",
        f"hydra.sweeper.study_name={study}", "hydra/sweeper/pruner=none", f"hydra.sweeper.storage={url}",
        "hydra.sweeper.heartbeat_interval=1", f"paths.output_root={out}", *overrides,
    ]  # fmt: skip


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"the sweep ended too early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


@dataclass
class FaultedSweep:
    """What one sweep on the server went through: a restart mid-trial 0, then an outage mid-trial 1."""

    out: Path
    before_stop: str  # the first run's log up to the outage: what the restart cost
    first_log: str  # all of it: the outage ended it
    first_code: int
    outage_ckpt: Path  # trial 1's last.ckpt when the server went away
    rerun: subprocess.CompletedProcess


# Both faults in one sweep, which costs ~40 s on 2 cores. A restart cut the storage for under 2 s on
# 2 loaded cores (retried within the timeout); the outage outlasts it, while trial 1 still trains.
STORAGE_TIMEOUT = 5


@pytest.fixture(scope="module")
def faulted_sweep(postgres: Server, tmp_path_factory: pytest.TempPathFactory) -> FaultedSweep:
    out = tmp_path_factory.mktemp("faulted")
    cmd = _sweep(
        out, "faults", postgres.url, "hydra.sweeper.n_trials=2", "trainer.max_steps=48",
        f"hydra.sweeper.storage_timeout={STORAGE_TIMEOUT}",
    )  # fmt: skip
    log = out / "first.log"
    trial_dir = out / "sweeps" / "faults"
    proc = _start(cmd, log)
    stopped = False
    try:
        _wait_for_file(trial_dir / "0" / "checkpoints" / "last.ckpt", proc, log)
        postgres.ctl("restart", "-m", "fast")  # every connection is cut; back within seconds
        outage_ckpt = trial_dir / "1" / "checkpoints" / "last.ckpt"
        _wait_for_file(outage_ckpt, proc, log)  # the sweep went on: trial 0 ended, trial 1 started
        before_stop = log.read_text()
        postgres.ctl("stop", "-m", "fast")
        stopped = True
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if stopped:
            postgres.ctl("start")
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    return FaultedSweep(out, before_stop, log.read_text(), code, outage_ckpt, rerun)


@pytest.mark.slow
def test_a_server_restart_mid_trial_costs_nothing(postgres: Server, faulted_sweep: FaultedSweep) -> None:
    output = faulted_sweep.before_stop
    trials = optuna.load_study(study_name="faults", storage=postgres.url).trials
    # Trial 0 trained through the restart; the only FAIL is trial 1, which the later outage ended.
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE], [
        t.user_attrs for t in trials
    ]
    assert trials[1].user_attrs["fail_kind"] == "storage", trials[1].user_attrs
    assert sorted(trials[0].intermediate_values) == list(range(4, 49, 4))  # no report was dropped
    assert "trial 0 COMPLETE" in output  # in the run the restart hit, which went on to trial 1
    # One line per outage at most: when the restart falls between storage calls, pool_pre_ping's
    # reconnect hides it completely and no call ever sees it.
    retrying = f"unreachable, retrying for up to {STORAGE_TIMEOUT} s"
    assert output.count(retrying) <= 1, output[-4000:]
    assert "unreachable for over" not in output, output[-4000:]
    assert "Traceback" not in output and PASSWORD not in output


@pytest.mark.slow
def test_a_long_outage_ends_the_sweep_cleanly_and_the_rerun_resumes(
    postgres: Server, faulted_sweep: FaultedSweep
) -> None:
    output = faulted_sweep.first_log
    assert faulted_sweep.first_code == 75, output[-4000:]
    assert "Traceback" not in output and PASSWORD not in output
    shown = postgres.url.replace(PASSWORD, "***")
    [line] = [ln for ln in output.splitlines() if "unreachable for over" in ln]
    assert f"storage {shown} unreachable for over {STORAGE_TIMEOUT} s" in line
    assert "run the same command again" in line

    result = faulted_sweep.rerun  # the same command, once the server is back
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = optuna.load_study(study_name="faults", storage=postgres.url).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    reason = trials[1].user_attrs["fail_reason"]
    assert trials[1].user_attrs["fail_kind"] == "storage", reason
    assert f"unreachable for over {STORAGE_TIMEOUT} s" in reason, reason
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert retry.user_attrs["resume_from"] == str(faulted_sweep.outage_ckpt)
    assert retry.params == trials[1].params
    job_log = (faulted_sweep.out / "sweeps" / "faults" / str(retry.number) / "train.log").read_text()
    assert "Restored all states from the checkpoint" in job_log


@pytest.mark.slow
def test_a_worker_started_during_a_restart_waits_for_the_server(postgres: Server) -> None:
    """A worker's storage check rides out an outage (its main process reached the server a moment
    ago); a user's command still fails at once on a server that does not answer."""
    from hydra_plugins.sweeplab_sweeper.checks import storage_problem

    postgres.ctl("stop", "-m", "fast")
    back = threading.Timer(2.0, postgres.ctl, ["start"])
    try:
        assert "cannot connect" in storage_problem(postgres.url)
        back.start()
        assert storage_problem(postgres.url, timeout=60) is None
    finally:
        if back.ident is None:  # the first check failed before the timer was started
            postgres.ctl("start")
        else:
            back.join()


@pytest.mark.slow
def test_a_command_started_during_a_restart_rides_it_out(postgres: Server) -> None:
    """A user's command (the late worker in another shell) that meets an immediate restart waits for the
    server (crash recovery, then up) instead of failing; it would fail at once without the grace."""
    from hydra_plugins.sweeplab_sweeper.checks import storage_problem

    postgres.ctl("stop", "-m", "immediate")
    back = threading.Timer(2.0, postgres.ctl, ["start"])
    back.start()
    try:
        assert storage_problem(postgres.url, grace=60) is None
    finally:
        back.join()


@pytest.mark.slow
def test_a_suggested_param_is_stored_across_a_restart(postgres: Server) -> None:
    """Optuna's cache stores each suggested param through a private storage call (chaos found it left
    out of the retries: a restart there was a traceback). It rides out the restart and stores it once."""
    from sweeplab.sweep.storage_retry import RetryingRDBStorage

    storage = RetryingRDBStorage(postgres.url, timeout=60)
    study = optuna.create_study(study_name=f"param-{time.time_ns()}", storage=storage)
    trial = study.ask()
    trial.suggest_float("before", 0, 1)
    postgres.ctl("stop", "-m", "immediate")
    back = threading.Timer(2.0, postgres.ctl, ["start"])
    back.start()
    try:
        value = trial.suggest_float("x", 0, 1)
    finally:
        back.join()
    assert storage.get_trial(trial._trial_id).params == {"before": trial.params["before"], "x": value}
    storage.engine.dispose()


def _flaky(failures: int) -> Callable[[], str]:
    """Fails like a restarting server `failures` times, then answers."""
    import sqlalchemy.exc

    left = [failures]

    def call() -> str:
        if left[0]:
            left[0] -= 1
            cause = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
            raise optuna.exceptions.StorageInternalError("commit failed") from cause
        return "ok"

    return call


def test_a_short_outage_is_retried_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    from sweeplab.sweep import storage_retry

    url = f"postgresql+psycopg://u:{PASSWORD}@db/x"
    with caplog.at_level("WARNING", logger="sweeplab.sweep.storage_retry"):
        assert storage_retry.call_with_retry(_flaky(3), url, timeout=30) == "ok"
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "storage postgresql+psycopg://u:***@db/x unreachable, retrying for up to 30 s"
    assert len(lines) == 2 and lines[1].startswith("storage reachable again after")


def test_a_long_outage_raises_one_error_naming_the_storage_without_its_password() -> None:
    from sweeplab.sweep import storage_retry

    url = f"postgresql+psycopg://u:{PASSWORD}@db/y"
    with pytest.raises(storage_retry.StorageUnreachable) as err:
        storage_retry.call_with_retry(_flaky(1000), url, timeout=1)
    assert str(err.value).startswith("storage postgresql+psycopg://u:***@db/y unreachable for over 1 s")
    assert PASSWORD not in str(err.value) and "run the same command again" in str(err.value)


def test_errors_other_than_a_lost_connection_are_not_retried() -> None:
    from sweeplab.sweep import storage_retry

    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("no such study")

    with pytest.raises(KeyError):
        storage_retry.call_with_retry(broken, "sqlite:///x.db", timeout=30)
    assert calls == [1]


def test_a_query_after_a_lost_connection_in_the_same_transaction_is_retried() -> None:
    """optuna's _get_trials falls back to a second query when the first fails; after a server restart
    that one raises PendingRollbackError, whose context is the lost connection."""
    import sqlalchemy.exc

    from sweeplab.sweep.storage_retry import transient

    def failed_within(first: Exception) -> optuna.exceptions.StorageInternalError:
        again = sqlalchemy.exc.PendingRollbackError("Can't reconnect until the transaction is rolled back")
        again.__context__ = first  # raised while handling the first, as Python chains it
        error = optuna.exceptions.StorageInternalError("commit failed")
        error.__cause__ = again
        return error

    lost = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("terminating connection"))
    assert transient(failed_within(lost))
    assert not transient(failed_within(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("dup"))))
