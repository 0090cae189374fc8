"""Sweep workers as submitit jobs: real local jobs (`hydra/launcher=submitit_local`, the same code path
as `submitit_slurm` but for sbatch) on the real PostgreSQL server of test_postgres.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from optuna.trial import TrialState

from hydra_plugins.sweeplab_sweeper.cluster import make_executor
from tests.conftest import ROOT
from tests.test_postgres import PASSWORD, Server, _files_holding, postgres  # noqa: F401 - the fixture
from tests.test_sweep import SMALL


def command(out: Path, study: str, url: str, *overrides: str) -> list[str]:
    sweep = [o for o in SMALL if not o.startswith("trainer.max_steps")]
    return [
        sys.executable, "-m", "sweeplab.train", "--multirun", *sweep, "hparams_search=qlora",
        f"hydra.sweeper.study_name={study}", "hydra/sweeper/pruner=none", f"hydra.sweeper.storage={url}",
        "hydra.sweeper.n_jobs=2", "hydra.sweeper.heartbeat_interval=1", "hydra/launcher=submitit_local",
        f"paths.output_root={out}", *overrides,
    ]  # fmt: skip


def run(cmd: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def job_logs(out: Path, study: str) -> list[str]:
    return [p.read_text() for p in sorted((out / "sweeps" / study / ".submitit").glob("*/*_log.out"))]


def launched(logs: list[str]) -> list[int]:
    """Trial numbers as the workers launched them, over all worker jobs."""
    return sorted(int(n) for log in logs for n in re.findall(r"\] trial (\d+)(?: \([^)]*\))?: ", log))


def assert_all_complete_once(trials: list[optuna.trial.FrozenTrial], n: int) -> None:
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n, [t.user_attrs for t in trials]
    assert sorted(t.number for t in trials) == list(range(n))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n


@pytest.mark.slow
def test_two_worker_jobs_run_every_trial_exactly_once(postgres: Server, tmp_path: Path) -> None:  # noqa: F811
    result = run(command(tmp_path, "jobs", postgres.url, "hydra.sweeper.n_trials=4", "trainer.max_steps=8"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert_all_complete_once(optuna.load_study(study_name="jobs", storage=postgres.url).trials, 4)
    logs = job_logs(tmp_path, "jobs")
    assert len(logs) == 2 and all(re.search(r"\] trial \d+", log) for log in logs)  # both took trials
    assert launched(logs) == [0, 1, 2, 3]  # none launched twice, none lost
    assert "study jobs: {'COMPLETE': 4}" in output and "best trial" in output
    # The storage password reaches the jobs by environment, never the pickled job or any log.
    assert PASSWORD not in output and _files_holding(tmp_path, [PASSWORD]) == []


@pytest.mark.slow
def test_a_worker_job_killed_mid_trial_is_recovered(postgres: Server, tmp_path: Path) -> None:  # noqa: F811
    cmd = command(tmp_path, "kill", postgres.url, "hydra.sweeper.n_trials=4", "trainer.max_steps=32")
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ckpt = tmp_path / "sweeps" / "kill" / "1" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 600
    while not ckpt.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()
        time.sleep(0.2)
    worker = (
        optuna.load_study(study_name="kill", storage=postgres.url).trials[1].system_attrs["sweeplab:worker"]
    )
    os.kill(worker["pid"], signal.SIGKILL)  # the worker in one job dies mid-trial, no handler runs
    assert proc.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-4000:]
    output = (tmp_path / "sweep.log").read_text()

    trials = optuna.load_study(study_name="kill", storage=postgres.url).trials
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["fail_kind"] == "killed"
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[1].params
    assert retry.user_attrs["resume_from"] == str(ckpt)  # the other worker went on from the checkpoint
    job_log = (tmp_path / "sweeps" / "kill" / str(retry.number) / "train.log").read_text()
    assert "Restored all states from the checkpoint" in job_log
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4 and len(trials) == 5
    assert re.search(r"worker job \d+ failed \(.*exited with code -9\); its log: ", output), output[-3000:]


@pytest.mark.slow
def test_wait_false_returns_at_once_and_the_rerun_waits_and_summarizes(
    postgres: Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Trials long enough that the first run's jobs still work when the rerun starts.
    cmd = command(tmp_path, "detach", postgres.url, "hydra.sweeper.n_trials=4", "trainer.max_steps=32")
    started = time.monotonic()
    first = run([*cmd, "hydra.sweeper.wait=false"], timeout=300)
    took = time.monotonic() - started
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-4000:]
    assert "submitted 2 sweep worker jobs (local)" in output and "run the same command again" in output
    assert len(re.findall(r"log of job \d+: .*_log\.out", output)) == 2
    trials = optuna.load_study(study_name="detach", storage=postgres.url).trials
    assert took < 60 and not [t for t in trials if t.state == TrialState.COMPLETE], took  # did not wait

    ids = re.findall(r"log of job (\d+): ", first.stdout + first.stderr)
    again = run(cmd)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-4000:]
    # The rerun waits on the two jobs still working instead of submitting two more.
    assert (
        f"2 worker jobs of an earlier run of this sweep are still queued or running: {' '.join(ids)}; "
        "attached to them, submitting none (hydra.sweeper.n_jobs=2)"
    ) in output, output[-4000:]
    assert "study detach: {'COMPLETE': 4}" in output and "best trial" in output
    assert_all_complete_once(optuna.load_study(study_name="detach", storage=postgres.url).trials, 4)
    logs = job_logs(tmp_path, "detach")
    assert len(logs) == 2 and launched(logs) == [0, 1, 2, 3]  # the same two workers, each trial once

    third = run(cmd)  # nothing left running: a rerun submits fresh workers, which find the study full
    assert third.returncode == 0 and "attached" not in third.stdout + third.stderr, third.stderr[-3000:]
    assert len(job_logs(tmp_path, "detach")) == 4


def test_a_rerun_reads_which_earlier_slurm_jobs_are_still_alive(tmp_path: Path, monkeypatch) -> None:
    """sacct (here a script standing in for SLURM's) says which stored jobs are queued or running."""
    from submitit.slurm.slurm import SlurmJob

    from hydra_plugins.sweeplab_sweeper import earlier_jobs

    (tmp_path / "bin").mkdir()
    sacct = tmp_path / "bin" / "sacct"
    sacct.write_text(
        "#!/bin/sh\necho 'JobID|State|NodeList'\necho '7001_0|PENDING|None assigned'\n"
        "echo '7001_1|RUNNING|gpu3'\necho '7001_2|COMPLETED|gpu4'\necho '7001_3|CANCELLED by 1000|gpu5'\n"
    )
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    folder = tmp_path / ".submitit" / "%j"
    jobs = [SlurmJob(folder, f"7001_{k}") for k in range(4)] + [SlurmJob(folder, "6999_0")]  # not in sacct
    earlier_jobs.record(study, jobs, "slurm")
    alive = earlier_jobs.alive(
        optuna.load_study(study_name=study.study_name, storage=study._storage), "slurm"
    )
    assert [job.job_id for job in alive] == ["7001_0", "7001_1"]
    assert alive[0].paths.stdout == tmp_path / ".submitit" / "7001_0" / "7001_0_0_log.out"
    assert earlier_jobs.alive(study, "local") == []  # another launcher's jobs are not this one's


def test_slurm_refuses_sqlite_and_more_than_one_worker_per_job(tmp_path: Path) -> None:
    result = run(
        command(
            tmp_path,
            "s",
            "sqlite:///x.db",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.nodes=2",
            "hydra.launcher.max_num_timeout=2",
        ),  # fmt: skip
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "sweeplab: error: cannot run the workers as jobs:" in result.stderr
    assert "hydra.sweeper.storage=sqlite:///x.db: SLURM workers on other nodes need" in result.stderr
    assert "hydra.launcher.nodes=2: must be 1" in result.stderr and "Traceback" not in result.stderr
    assert "hydra.launcher.max_num_timeout=2: worker jobs are not requeued" in result.stderr
    assert not (tmp_path / "sweeps" / "s" / ".submitit").exists()  # nothing was submitted


def test_wait_false_needs_a_submitit_launcher(tmp_path: Path) -> None:
    cmd = [a for a in command(tmp_path, "b", "sqlite:///x.db") if not a.startswith("hydra/launcher")]
    result = run([*cmd, "hydra.sweeper.wait=false"], timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "hydra.sweeper.wait=false needs hydra/launcher=submitit_slurm or submitit_local" in result.stderr


def test_the_launcher_config_reaches_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partition, GPUs, time limit and extras map to sbatch flags as hydra-submitit-launcher maps them."""
    (tmp_path / "srun").write_text("#!/bin/sh\n")  # submitit's only check that this is a SLURM cluster
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    launcher = SlurmLauncher(
        submitit_folder=str(tmp_path / "%j"), timeout_min=240, gpus_per_node=2, cpus_per_task=8, mem_gb=64,
        tasks_per_node=1, nodes=1, name="sweep", stderr_to_stdout=False, partition="gpu", max_num_timeout=0,
        signal_delay_s=120, additional_parameters={"mail-type": "END"}, array_parallelism=4,
        setup=["module load cuda"],
    )  # fmt: skip
    executor = make_executor(launcher)
    assert executor._executor.max_num_timeout == 0
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for flag in ("--partition=gpu", "--gpus-per-node=2", "--time=240", "--cpus-per-task=8", "--mem=64GB",
                 "--job-name=sweep", "--mail-type=END", "--signal=USR2@120"):  # fmt: skip
        assert f"#SBATCH {flag}" in script, script
    assert "module load cuda" in script
