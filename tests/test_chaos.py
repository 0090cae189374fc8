"""Chaos: 4 sweep workers on a real PostgreSQL under a seeded schedule of faults, all in one sweep.

Each fault has its own test elsewhere (test_sweep_faults, test_postgres, test_storage_lock); here they
land together, at random points of random trials: a worker SIGKILLed, the server restarted fast and
immediate, SIGTERM to the main process and the same command again, a worker started late. Then the
sweeper's promises are checked from the study and the run dirs: the total is exact, nothing trained
to completion twice, every cut-off trial failed with its kind and went on from its last checkpoint.

The schedule comes from SWEEPLAB_CHAOS_SEED (printed first): `SWEEPLAB_CHAOS_SEED=N pytest
tests/test_chaos.py -s` replays a failure's schedule (the faults land on whatever trial is running).
Measured on 2 cores shared with other jobs (load 5-7): 2-4.5 minutes (seeds 20261205, 1, 77).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from tests.conftest import ROOT
from tests.test_postgres import Server, postgres  # noqa: F401 - the fixture
from tests.test_sweep import SMALL

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("SWEEPLAB_CHAOS_SEED", "20261205"))
N_TRIALS = 24
MAX_STEPS = 12  # SMALL's trainer.max_steps
N_JOBS = 4
STUDY = "chaos"
FAULTS = ("kill_worker", "restart_fast", "restart_immediate", "sigterm_rerun", "late_worker")
FINISHED = ("COMPLETE", "PRUNED")  # what the sweeper counts toward n_trials
CUT_KINDS = {"killed", "interrupted", "storage"}  # how these faults may end a trial


@dataclass(frozen=True)
class Fault:
    name: str
    after_done: int  # fires once this many trials are finished (COMPLETE or PRUNED) ...
    delay_s: float  # ... and this much later, so it lands anywhere in the trials then running


def schedule(seed: int) -> list[Fault]:
    """Every fault once, in a seeded order, at seeded points of the sweep's first half: trials take a
    second or two, so later points could find the study full (a fault whose turn never comes is skipped,
    and said so)."""
    rng = random.Random(seed)
    order = rng.sample(FAULTS, len(FAULTS))
    points = sorted(rng.sample(range(1, N_TRIALS // 2), len(order)))
    return [Fault(name, at, round(rng.uniform(0.0, 3.0), 1)) for name, at in zip(order, points, strict=True)]


def command(out: Path, url: str, *overrides: str) -> list[str]:
    """Short trials (12 steps, a checkpoint at each validation every 4) with no decoding: a trial is
    seconds, so faults land at every phase of one (start-up, training, the last writes, the tell)."""
    return [
        sys.executable, "-m", "sweeplab.train", "--multirun", *SMALL, "hparams_search=qlora",
        "eval.n_generate=0", "eval.test=false", f"hydra.sweeper.study_name={STUDY}",
        f"hydra.sweeper.storage={url}", f"hydra.sweeper.n_trials={N_TRIALS}",
        "hydra.sweeper.heartbeat_interval=1", f"paths.output_root={out}", *overrides,
    ]  # fmt: skip


@dataclass
class Sweep:
    """The processes of the sweep the schedule works on, and every log they wrote."""

    out: Path
    url: str
    runs: list[subprocess.Popen] = field(default_factory=list)  # the main command, then its reruns
    late: subprocess.Popen | None = None
    killed: set[int] = field(default_factory=set)  # pids the schedule SIGKILLed
    logs: list[Path] = field(default_factory=list)
    # trial number -> (the fault that cut it, its last.ckpt's step then, or None): read at once, as
    # keep_checkpoints deletes the file once the trial's retry has ended
    cut: dict[int, tuple[str, int | None]] = field(default_factory=dict)

    def record_cut(self, number: int, fault: str) -> None:
        self.cut.setdefault(number, (fault, checkpoint_step(self.run_dir(number))))

    def run_dir(self, number: int) -> Path:
        return self.out / "sweeps" / STUDY / str(number)

    def start_step(self, number: int) -> int | None:
        """The step trial `number`'s job started training at: 0, or that of the checkpoint it restored
        (None when that checkpoint's trial was cut unseen by the schedule)."""
        restored = restored_from(self.run_dir(number))
        if restored is None:
            return 0
        return self.cut.get(int(Path(restored).parent.parent.name), (None, None))[1]

    @property
    def main(self) -> subprocess.Popen:
        return self.runs[-1]

    def start(self, name: str, *overrides: str) -> subprocess.Popen:
        log = self.out / f"{name}.log"
        self.logs.append(log)
        with open(log, "w") as handle:
            return subprocess.Popen(
                command(self.out, self.url, *overrides),
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in self.all_logs() if p.is_file())

    def all_logs(self) -> list[Path]:
        return [*self.logs, *sorted((self.out / "sweeps" / STUDY).glob("worker-*.log"))]


class Study:
    """Read-only SQL on the study, tolerant of the server being down: the schedule polls it throughout."""

    def __init__(self, url: str) -> None:
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    def _rows(self, sql: str) -> list[tuple]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(sqlalchemy.text(sql), {"s": STUDY}))
        except sqlalchemy.exc.SQLAlchemyError:
            return []  # restarting, or the schema is not made yet

    def done(self) -> int:
        states = ", ".join(f"'{s}'" for s in FINISHED)
        return len(
            self._rows(
                "SELECT t.trial_id FROM trials t JOIN studies s ON s.study_id = t.study_id "
                f"WHERE s.study_name = :s AND t.state IN ({states})"
            )
        )

    def running(self) -> list[tuple[int, int, str]]:
        """(trial number, worker pid, run dir) of each RUNNING trial that has a run dir yet."""
        rows = self._rows(
            "SELECT t.number, a.value_json, u.value_json FROM trials t "
            "JOIN studies s ON s.study_id = t.study_id "
            "JOIN trial_system_attributes a ON a.trial_id = t.trial_id AND a.key = 'sweeplab:worker' "
            "JOIN trial_user_attributes u ON u.trial_id = t.trial_id AND u.key = 'run_dir' "
            "WHERE s.study_name = :s AND t.state = 'RUNNING'"
        )
        return [(n, json.loads(worker)["pid"], json.loads(run_dir)) for n, worker, run_dir in rows]


def checkpoint_step(run_dir: Path) -> int | None:
    import torch

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, weights_only=True)["global_step"] if ckpt.is_file() else None


def dead(pid: int) -> bool:
    """Gone, or a zombie: the main process reaps its workers only when the sweep ends."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_worker(sweep: Sweep, study: Study, server: Server, rng: random.Random) -> None:
    """SIGKILL a worker process (not the main one: SIGTERM's turn) mid-trial, after its trial's first
    checkpoint when one comes within a few seconds, so the resume path is what gets tested."""
    main_pid = sweep.main.pid

    def victims(with_checkpoint: bool) -> list[tuple[int, int, str]]:
        return [
            (n, pid, d)
            for n, pid, d in study.running()
            if pid != main_pid and (not with_checkpoint or (Path(d) / "checkpoints" / "last.ckpt").is_file())
        ]

    deadline = time.monotonic() + 5
    while not (found := victims(True)) and time.monotonic() < deadline and sweep.main.poll() is None:
        time.sleep(0.2)
    while not (found := found or victims(False)):
        if sweep.main.poll() is not None:  # trials of a second: the study filled up first
            print("chaos: no worker's trial left to kill: skipped", flush=True)
            return
        time.sleep(0.05)
    number, pid, _ = rng.choice(sorted(found))
    os.kill(pid, signal.SIGKILL)
    sweep.killed.add(pid)
    while not dead(pid):
        time.sleep(0.05)
    sweep.record_cut(number, "killed")
    print(f"chaos: SIGKILL worker pid {pid} in trial {number}", flush=True)


def restart(mode: str) -> Callable[..., None]:
    def fault(sweep: Sweep, study: Study, server: Server, rng: random.Random) -> None:
        server.ctl("restart", "-m", mode)  # every session ends; -m immediate: crash recovery on start
        print(f"chaos: PostgreSQL restarted -m {mode}", flush=True)

    return fault


def sigterm_rerun(sweep: Sweep, study: Study, server: Server, rng: random.Random) -> None:
    """What a batch system does to a job: SIGTERM to the main process alone, which stops its workers;
    then the same command again."""
    late = sweep.late.pid if sweep.late else None
    running = {n for n, pid, _ in study.running() if pid != late}  # another shell's worker goes on
    os.kill(sweep.main.pid, signal.SIGTERM)
    code = sweep.main.wait(timeout=300)
    assert code == 130, f"SIGTERM: exit {code}\n{sweep.tail()}"
    for number in running:
        sweep.record_cut(number, "interrupted")
    print(f"chaos: SIGTERM to the main process (trials {sorted(running)} running); rerun", flush=True)
    sweep.runs.append(sweep.start(f"run-{len(sweep.runs)}", f"hydra.sweeper.n_jobs={N_JOBS}"))


def late_worker(sweep: Sweep, study: Study, server: Server, rng: random.Random) -> None:
    """The same command in another shell, one worker, joining the running study."""
    sweep.late = sweep.start("late", "hydra.sweeper.n_jobs=1")
    print("chaos: a late worker joined", flush=True)


ACTIONS = {
    "kill_worker": kill_worker,
    "restart_fast": restart("fast"),
    "restart_immediate": restart("immediate"),
    "sigterm_rerun": sigterm_rerun,
    "late_worker": late_worker,
}


@pytest.fixture(scope="module")
def chaos(postgres: Server, tmp_path_factory: pytest.TempPathFactory) -> Sweep:  # noqa: F811
    faults = schedule(SEED)
    print(f"\nchaos: SWEEPLAB_CHAOS_SEED={SEED} schedule {faults}", flush=True)
    sweep = Sweep(tmp_path_factory.mktemp("chaos"), postgres.url)
    study = Study(postgres.url)
    rng = random.Random(SEED + 1)
    started = time.monotonic()
    sweep.runs.append(sweep.start("run-0", f"hydra.sweeper.n_jobs={N_JOBS}"))
    try:
        for fault in faults:
            while study.done() < fault.after_done and sweep.main.poll() is None:
                time.sleep(0.2)
            time.sleep(fault.delay_s)
            if sweep.main.poll() is not None:  # the study filled up before this fault's turn
                print(f"chaos: the sweep ended before {fault.name}: skipped with the rest", flush=True)
                break
            ACTIONS[fault.name](sweep, study, postgres, rng)
        for proc in [sweep.main, sweep.late]:
            code = proc.wait(timeout=600)  # the late worker may have been the one killed
            assert code == 0 or (proc.pid in sweep.killed and code == -signal.SIGKILL), (
                f"exit {code}\n{sweep.tail()}"
            )
    finally:
        stop_everything([p for p in [*sweep.runs, sweep.late] if p is not None])
        study.engine.dispose()
    print(f"chaos: sweep done in {time.monotonic() - started:.0f} s, cut {sweep.cut}", flush=True)
    return sweep


def stop_everything(procs: list[subprocess.Popen]) -> None:
    """After a failure: the commands and their workers (in sessions of their own, so not killpg)."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def load(sweep: Sweep) -> list[FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=sweep.url).trials


def retry_of(trials: list[FrozenTrial], number: int) -> FrozenTrial:
    """The trial queued to run `number`'s params again (Optuna's retry_history ends with it)."""
    [retry] = [t for t in trials if t.system_attrs.get("retry_history", [None])[-1] == number]
    return retry


def restored_from(run_dir: Path) -> str | None:
    """The checkpoint the run's trainer restored (Lightning's own line), None if it started afresh."""
    prefix = "Restored all states from the checkpoint at "
    lines = [ln for ln in (run_dir / "train.log").read_text().splitlines() if prefix in ln]
    return lines[0].split(prefix, 1)[1].strip() if lines else None


def test_exactly_n_trials_finished_and_none_left_running(chaos: Sweep) -> None:
    states = [t.state.name for t in load(chaos)]
    assert sum(s in FINISHED for s in states) == N_TRIALS, states
    assert "RUNNING" not in states and "WAITING" not in states, states


def test_no_parameter_set_trained_to_completion_twice(chaos: Sweep) -> None:
    trials = load(chaos)
    finished = [tuple(sorted(t.params.items())) for t in trials if t.state.name in FINISHED]
    assert len(set(finished)) == len(finished), finished
    # On disk: a worker killed after its job wrote metrics.json but before the tell leaves two run dirs
    # with metrics.json for one param set; the retry restored the final checkpoint and trained nothing.
    # What must not happen is a second attempt training up to the end.
    for t in trials:
        if t.state.name not in FINISHED:
            continue
        attempts = [*t.system_attrs.get("retry_history", []), t.number]
        trained = [n for n in attempts if (chaos.run_dir(n) / "metrics.json").is_file()]
        trained = [n for n in trained if chaos.start_step(n) != MAX_STEPS]
        assert len(trained) <= 1, (t.number, trained, chaos.cut)


def test_every_cut_off_trial_failed_with_its_kind_and_resumed_from_its_checkpoint(chaos: Sweep) -> None:
    trials = load(chaos)
    by_number = {t.number: t for t in trials}
    for number, (fault, _) in chaos.cut.items():
        cut = by_number[number]
        if cut.state.name in FINISHED:  # the fault came after its tell: nothing to resume
            continue
        assert cut.state == TrialState.FAIL and cut.user_attrs["fail_kind"] == fault, (number, cut.user_attrs)
    for cut in (t for t in trials if t.state == TrialState.FAIL):
        assert cut.user_attrs.get("fail_kind") in CUT_KINDS, (cut.number, cut.user_attrs)
        retry = retry_of(trials, cut.number)
        assert retry.params == cut.params
        resume_from = retry.user_attrs.get("resume_from")
        restored = restored_from(chaos.run_dir(retry.number)) if retry.state.name in FINISHED else None
        assert restored == resume_from or retry.state == TrialState.FAIL, (cut.number, retry.number)
        _, step = chaos.cut.get(cut.number, (None, None))
        if step:  # it had a checkpoint when the fault came: its retry went on from it, not from 0
            assert resume_from == str(chaos.run_dir(cut.number) / "checkpoints" / "last.ckpt"), (
                cut.number,
                retry.user_attrs,
            )
        elif resume_from is None:  # cut before its first checkpoint: starting again from 0 is right
            assert not cut.intermediate_values or cut.system_attrs.get("retry_history"), cut.number


def test_no_traceback_or_error_in_any_log(chaos: Sweep) -> None:
    logs = [*chaos.all_logs(), *sorted((chaos.out / "sweeps" / STUDY).glob("*/train.log"))]
    bad = {p: text for p in logs if "Traceback" in (text := p.read_text()) or "sweeplab: error" in text}
    shown = "\n\n".join(f"{p}:\n{excerpt(text)}" for p, text in bad.items())
    assert not bad, f"{shown}\n\n{chaos.tail()}"


def excerpt(text: str) -> str:
    """From a little before the first traceback or error: what went wrong, for a replay by seed."""
    at = min(i for i in (text.find("Traceback"), text.find("sweeplab: error")) if i >= 0)
    return text[max(0, at - 1500) : at + 3000]


def test_every_finished_trial_has_whole_metrics(chaos: Sweep) -> None:
    for t in load(chaos):
        if t.state == TrialState.COMPLETE:
            metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
            assert metrics["best_val_loss"] == pytest.approx(t.value)
            assert metrics["steps"] == MAX_STEPS
