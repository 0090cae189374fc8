"""python -m sweeplab.compare on real runs, real sweep trials, the seed-report experiments and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sweeplab.compare import CompareError, differing, load_side, main
from sweeplab.config import validate
from tests.conftest import ROOT, TINY, make_cfg, run_train

SHORT = ["trainer.max_steps=8", "trainer.val_every_n_steps=4"]


def compare(capsys: pytest.CaptureFixture, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def refused(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("runs")
    for name, extra in (("a", []), ("b", ["lora.r=8", "optim.lr=1e-3"])):
        result = run_train(*TINY, *SHORT, f"run_name={name}", *extra, output_root=out)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "runs" / "a", out / "runs" / "b"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    result = run_train(
        "--multirun",
        *TINY,
        *SHORT,
        "eval.n_generate=0",
        "eval.test=false",
        "hparams_search=qlora",
        "hydra.sweeper.study_name=s",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=4",
        output_root=out,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "sweeps" / "optuna.db"


@pytest.mark.slow
def test_two_runs_list_exactly_the_changed_keys(two_runs, tmp_path, capsys) -> None:
    a, b = two_runs
    assert differing(load_side(str(a), None), load_side(str(b), None)) == ["lora.r", "optim.lr"]
    text = compare(capsys, str(a), str(b), "--out", str(tmp_path))
    rows = re.findall(r"^\| (\S+) \| (\S+) \| (\S+) \|$", text.split("## Metrics")[0], re.M)
    assert [r for r in rows if r[0] not in ("key", "---")] == [
        ("lora.r", "16", "8"),
        ("optim.lr", "0.003", "0.001"),
    ]
    assert "run_name" not in text.split("_Not compared")[0]  # bookkeeping differs but is not listed
    for label in ("objective: val/loss (minimize)", "steps", "wall time (s)", "peak memory (MiB)"):
        assert f"| {label} |" in text
    trainable = re.search(r"^\| trainable parameters \| (\d+) \| (\d+) \| (-?\d+) \|$", text, re.M)
    assert trainable and int(trainable[1]) == 2 * int(trainable[2])  # r 16 vs 8: half the LoRA params
    assert "| test/tool_exact |" in text  # test accuracy, once eval ran
    assert (tmp_path / "compare.md").read_text() == text  # printed = written
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_two_trials_of_one_study_say_what_mattered(sweep, tmp_path, capsys) -> None:
    url = f"sqlite:///{sweep}"
    text = compare(capsys, "s:0", "s:1", "--storage", url, "--out", str(tmp_path))
    assert "## What study 's' says about each differing key" in text
    assert "### lora.r" in text and "### optim.weight_decay" in text  # the two recipes differ there
    assert re.search(r"importance: \d\.\d\d \(PED-ANOVA", text), text
    # objective along lora.r: one row per value the study tried, A's and B's marked
    section = text.split("### lora.r")[1].split("###")[0]
    assert re.search(r"^\| 8 \| \d+ \| .* \| A \|$", section, re.M), section
    assert re.search(r"^\| 64 \| \d+ \| .* \| B \|$", section, re.M), section
    # the storage may also be named inside the argument
    assert "### lora.r" in compare(capsys, f"{url}#s:0", f"{url}#s:1", "--out", str(tmp_path))


@pytest.mark.slow
def test_bad_trials_name_the_argument(sweep, tmp_path, capsys) -> None:
    url = f"sqlite:///{sweep}"
    err = refused(capsys, "nope:0", "s:1", "--storage", url, "--out", str(tmp_path))
    assert "nope:0" in err and "no study 'nope'" in err
    err = refused(capsys, "s:0", "s:99", "--storage", url, "--out", str(tmp_path))
    assert "s:99" in err and "trials 0..3, not 99" in err


def test_experiments_compare_configs_only(tmp_path, capsys) -> None:
    a, b = (ROOT / "experiments" / f"seed_report_{x}.yaml" for x in "ab")
    for name in ("seed_report_a", "seed_report_b"):
        validate(make_cfg(f"experiment={name}"))  # both compose and validate
    text = compare(capsys, str(a), str(b), "--out", str(tmp_path))
    assert "config only, nothing was run" in text and "No metrics" in text
    keys = differing(load_side(str(a), None), load_side(str(b), None))
    assert keys == [
        "lora.r",
        "lora.alpha",
        "lora.layers_to_transform",
        "optim.lr",
        "optim.weight_decay",
        "optim.schedule",
        "optim.warmup_steps",
    ]
    assert not (tmp_path / "compare.png").exists()


@pytest.mark.parametrize(
    ("arg", "says"),
    [
        ("does/not/exist", "does not exist"),
        ("tests", "holds no config.yaml"),
        ("pyproject.toml", "neither a run dir nor an experiment"),
        ("conf/lora/r8.yaml", "must live in"),
    ],
)
def test_bad_paths_name_the_argument(arg, says, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    err = refused(capsys, arg, "experiments/seed_report_a.yaml", "--out", str(tmp_path))
    assert err.startswith(f"sweeplab.compare: error: {arg}") and says in err
    assert "a run dir holding config.yaml" in err  # and what is accepted


def test_unknown_storage_file_is_refused_without_creating_it(tmp_path) -> None:
    with pytest.raises(CompareError, match="does not exist"):
        load_side(f"sqlite:///{tmp_path / 'x.db'}#s:0", None)
    assert not (tmp_path / "x.db").exists()
