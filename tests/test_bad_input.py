"""Bad input: one clear message naming the key, file:line or URL and what is allowed; a non-zero exit;
no traceback (unless HYDRA_FULL_ERROR=1); no run dir, study or trial left behind.

Every case runs the real entry point in a subprocess. Most fail in config validation (~1 s); the two
that need the tokenizer import torch and build the tiny base once per session.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sweeplab.trust import TRUST_ENV
from tests.conftest import ROOT, TINY, run_train


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n"


GOOD_LINE = chat(("user", "hi"), ("assistant", "ok"))
BAD_JSONL = GOOD_LINE * 2 + "{oops\n"
NO_ROLE = (
    GOOD_LINE + json.dumps({"messages": [{"content": "hi"}, {"role": "assistant", "content": "ok"}]}) + "\n"
)
SHAREGPT = json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]})
# Every chat is longer than 16 tokens, but its assistant turn comes first and survives the cut.
LONG = chat(("user", "hi"), ("assistant", "ok"), ("user", "and now a long story " * 20)) * 4


def jsonl(d: Path, name: str, text: str, *extra: str) -> list[str]:
    return ["data=jsonl", f"data.path={write(d / name, text)}", *extra]


def not_utf8(d: Path, name: str) -> Path:
    path = d / name
    path.write_bytes(
        GOOD_LINE.encode() + '{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'.encode("latin-1")
    )
    return path


# case: (overrides given the tmp dir, what names the mistake, what says what is allowed)
CASES = {
    # config values out of range
    "negative rank": (lambda d: ["lora.r=-3"], "lora.r", "greater than 0"),
    "dropout above 1": (lambda d: ["lora.dropout=1.5"], "lora.dropout", "less than 1"),
    "negative lr": (lambda d: ["optim.lr=-1"], "optim.lr", "greater than 0"),
    "zero steps": (lambda d: ["trainer.max_steps=0"], "trainer.max_steps", "greater than 0"),
    "zero batch size": (lambda d: ["data.batch_size=0"], "data.batch_size", "greater than 0"),
    "warmup ratio above 1": (lambda d: ["optim.warmup_ratio=1.5"], "optim.warmup_ratio", "less than 1"),
    "min lr ratio above 1": (
        lambda d: ["optim.min_lr_ratio=2"],
        "optim.min_lr_ratio",
        "less than or equal to 1",
    ),
    "beta2 above 1": (lambda d: ["optim.betas=[0.9,1.5]"], "optim.betas.1", "less than 1"),
    "no val batches": (
        lambda d: ["trainer.limit_val_batches=0"],
        "trainer.limit_val_batches",
        "greater than 0",
    ),
    "tiny max_seq_len": (lambda d: ["data.max_seq_len=4"], "data.max_seq_len", "greater than or equal to 8"),
    "zero patience": (
        lambda d: ["callbacks.early_stopping.patience=0"],
        "callbacks.early_stopping.patience",
        "greater than or equal to 1",
    ),
    # wrong type
    "lr not a number": (lambda d: ["optim.lr=abc"], "optim.lr", "valid number"),
    "fractional rank": (lambda d: ["lora.r=8.5"], "lora.r", "valid integer"),
    "batch size as a word": (lambda d: ["data.batch_size=two"], "data.batch_size", "valid integer"),
    "flag not a boolean": (
        lambda d: ["trainer.enable_progress_bar=maybe"],
        "trainer.enable_progress_bar",
        "valid boolean",
    ),
    # unknown choice
    "unknown model preset": (lambda d: ["model=nope"], "model/nope", "qwen2.5-0.5b"),
    "unknown lora preset": (lambda d: ["lora=r12"], "lora/r12", "r16"),
    "unknown target set": (lambda d: ["lora.targets=nope"], "lora.targets", "all-linear"),
    "unknown optimizer": (lambda d: ["optim.name=sgd"], "optim.name", "paged_adamw_8bit"),
    "unknown precision": (lambda d: ["trainer.precision=fp16"], "trainer.precision", "bf16-mixed"),
    "unknown data source": (lambda d: ["data.source=csv"], "data.source", "'jsonl'"),
    "run name with a slash": (lambda d: ["run_name=exp/1"], "run_name", "should match pattern"),
    # unknown key
    "unknown key": (lambda d: ["+lora.rank=8"], "lora.rank", "expected one of ['alpha'"),
    "unknown key without +": (lambda d: ["lora.rank=8"], "lora.rank", "+lora.rank=8"),
    # options that contradict each other
    "warmup longer than training": (
        lambda d: ["optim.warmup_steps=500"],
        "optim.warmup_steps",
        "trainer.max_steps",
    ),
    "max_seq_len beyond the base's positions": (
        lambda d: ["data.max_seq_len=1024"],
        "data.max_seq_len",
        "max_position_embeddings (512)",
    ),
    "lora on a layer the model lacks": (
        lambda d: ["lora.layers_to_transform=[5]"],
        "lora.layers_to_transform",
        "0..1",
    ),
    "lora on a layer before the first": (
        lambda d: ["lora.layers_to_transform=[-3,-1]"],
        "lora.layers_to_transform ([-3, -1]): [-3] out of range",
        "num_layers=2, so use 0..1, or -2..-1",
    ),
    "lora layer named twice": (
        lambda d: ["lora.layers_to_transform=[1,-1]"],
        "lora.layers_to_transform",
        "names a layer twice",
    ),
    "lora target that matches no module": (
        lambda d: ["lora.targets=[q_proj,bogus]"],
        "lora.targets (['q_proj', 'bogus']): ['bogus'] match no module",  # the base loads first
        "its linear layers are ['down_proj', 'gate_proj', 'k_proj'",
    ),
    "unknown schedule": (
        lambda d: ["optim.schedule=step"],
        "optim.schedule",
        "'cosine', 'linear' or 'constant'",
    ),
    "negative warmup start": (
        lambda d: ["optim.warmup_start_ratio=-0.1"],
        "optim.warmup_start_ratio",
        "greater than or equal to 0",
    ),
    "warmup start without a warmup": (
        lambda d: ["optim.warmup_steps=0", "optim.warmup_start_ratio=0.5"],
        "optim.warmup_start_ratio",
        "there is no warmup",
    ),
    "negative loraplus ratio": (
        lambda d: ["optim.loraplus_lr_ratio=-4"],
        "optim.loraplus_lr_ratio",
        "greater than 0",
    ),
    "dora not a boolean": (lambda d: ["lora.use_dora=maybe"], "lora.use_dora", "valid boolean"),
    "hub id and embedded base both set": (
        lambda d: ["model.name_or_path=some/model"],
        "model.name_or_path",
        "exactly one",
    ),
    # a GGUF source (model=smollm2-135m's kind) checked before torch is imported
    "gguf package not installed": (
        lambda d: ["model.embedded=null", "model.gguf={package: no_such_package_xyz, file: m.gguf}"],
        "model.gguf.package",
        "make install",
    ),
    "gguf file missing": (
        lambda d: ["model.embedded=null", f"model.gguf={{package: null, file: '{d / 'nope.gguf'}'}}"],
        "model.gguf.file",
        "no such file",
    ),
    "data file without data=jsonl": (
        lambda d: [f"data.path={write(d / 'mine.jsonl', GOOD_LINE * 4)}"],
        "data.path",
        "data=jsonl",
    ),
    "val file is the train file": (
        lambda d: jsonl(d, "same.jsonl", GOOD_LINE * 4, f"data.val_path={d / 'same.jsonl'}"),
        "data.val_path",
        "data.val_fraction",
    ),
    "resume with nothing to resume": (lambda d: ["ckpt_path=last"], "ckpt_path", "last.ckpt"),
    "sweep config without --multirun": (lambda d: ["hparams_search=qlora"], "hparams_search", "--multirun"),
    # data files
    "missing data file": (
        lambda d: ["data=jsonl", f"data.path={d / 'nope.jsonl'}"],
        "nope.jsonl",
        "no such file",
    ),
    "data=jsonl without a path": (lambda d: ["data=jsonl"], "data.path", "data.path=/path/to/file"),
    "empty data file": (lambda d: jsonl(d, "empty.jsonl", ""), "empty.jsonl", '{"messages"'),
    "data file not UTF-8": (
        lambda d: ["data=jsonl", f"data.path={not_utf8(d, 'latin1.jsonl')}"],
        "latin1.jsonl:2",
        "save the file as UTF-8",
    ),
    "text file not UTF-8": (
        lambda d: ["data=text", f"data.path={not_utf8(d, 'latin1.txt')}"],
        "latin1.txt:2",
        "save the file as UTF-8",
    ),
    "malformed jsonl line": (lambda d: jsonl(d, "bad.jsonl", BAD_JSONL), "bad.jsonl:3", '{"messages"'),
    "message without a role": (
        lambda d: jsonl(d, "norole.jsonl", NO_ROLE),
        "norole.jsonl:2",
        "allowed roles",
    ),
    "sharegpt role names": (
        lambda d: jsonl(d, "roles.jsonl", chat(("human", "hi"), ("gpt", "ok"))),
        "roles.jsonl:1",
        "allowed roles: system, user, assistant",
    ),
    "sharegpt layout": (
        lambda d: jsonl(d, "sharegpt.jsonl", SHAREGPT + "\n"),
        "sharegpt.jsonl:1",
        '{"messages"',
    ),
    "chat with no assistant turn": (
        lambda d: jsonl(d, "noasst.jsonl", GOOD_LINE + chat(("system", "be brief"), ("user", "hi"))),
        "noasst.jsonl:2",
        "add one",
    ),
    "missing val file": (
        lambda d: jsonl(d, "train.jsonl", GOOD_LINE * 4, f"data.val_path={d / 'val_nope.jsonl'}"),
        "val_nope.jsonl",
        "no such file",
    ),
    "malformed val file": (
        lambda d: jsonl(d, "train.jsonl", GOOD_LINE * 4, f"data.val_path={write(d / 'val.jsonl', '[1, 2]')}"),
        "val.jsonl:1",
        '{"messages"',
    ),
    # the objective
    "unknown objective metric": (lambda d: ["objective.metric=val/f1"], "objective.metric", "val/tool_exact"),
    "objective direction against its metric": (
        lambda d: ["objective.metric=val/tool_exact", "objective.direction=minimize"],
        "contradicts metric=val/tool_exact",
        "objective.direction=maximize",
    ),
    "tool objective without generation": (
        lambda d: ["objective.metric=val/tool_exact", "eval.n_generate=0"],
        "objective.metric=val/tool_exact",
        "eval.n_generate > 0",
    ),
    "test file is the train file": (
        lambda d: jsonl(d, "train.jsonl", GOOD_LINE * 4, f"data.test_path={d / 'train.jsonl'}"),
        "data.test_path",
        "held out",
    ),
    "missing test file": (
        lambda d: jsonl(d, "train.jsonl", GOOD_LINE * 4, f"data.test_path={d / 'test_nope.jsonl'}"),
        "test_nope.jsonl",
        "no such file",
    ),
    # these need the tokenizer (torch import, tiny base built once per session)
    "tool objective on chats without tool calls": (
        lambda d: jsonl(d, "prose.jsonl", GOOD_LINE * 8, "objective.metric=val/tool_exact"),
        "none of the 1 val chats ends in an assistant tool call",
        "objective.metric=val/loss",
    ),
    "every chat longer than max_seq_len": (
        lambda d: jsonl(d, "long.jsonl", LONG, "data.max_seq_len=16"),
        "train chats are longer than data.max_seq_len=16",
        "raise data.max_seq_len",
    ),
    "one chat and no val file": (
        lambda d: jsonl(d, "one.jsonl", LONG.splitlines()[0] + "\n"),
        "one.jsonl",
        "data.val_path",
    ),
}


def assert_clean_failure(result: subprocess.CompletedProcess, needle: str, allowed: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert needle in result.stderr, output[-2000:]
    assert allowed in result.stderr, output[-2000:]
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly(case: str, tmp_path: Path) -> None:
    make_overrides, needle, allowed = CASES[case]
    out = tmp_path / "outputs"
    result = run_train(*TINY, *make_overrides(tmp_path), output_root=out, timeout=300)
    assert_clean_failure(result, needle, allowed)
    runs = out / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a failed run left a run dir behind"
    for name in ("metrics.json", "adapter", "checkpoints", "config.yaml"):
        assert not list(out.rglob(name)), f"{name} left behind"


# --- sweeps: nothing may reach the storage or run a trial ------------------------------------------

SMALL = ["model=tiny", "logger=csv", "trainer.max_steps=2", "trainer.enable_progress_bar=false"]
TEST_CONF = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"
# pruner=none: the default pruner's first rung (the first validation) could never act in a 2-step
# trial, a mistake of its own (cases below) that would otherwise be reported beside every case's.
QLORA = [
    "hparams_search=qlora",
    "hydra.sweeper.study_name=s",
    "hydra.sweeper.n_trials=1",
    "hydra/sweeper/pruner=none",
]
ASHA = "hydra/sweeper/pruner=successive_halving"  # the qlora default, which QLORA above turns off
SHORT = ["trainer.max_steps=12", "trainer.val_every_n_steps=4"]  # validations at 4 and 8 can prune


def sweep(out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_train("--multirun", *SMALL, *QLORA, *overrides, output_root=out, env=env, timeout=300)


def a_file(d: Path) -> Path:
    return write(d / "a-file", "not a directory")


SWEEP_CASES = {
    "sweep of a model whose wheel is missing": (
        lambda d: ["model.embedded=null", "model.gguf={package: no_such_package_xyz, file: m.gguf}"],
        "model.gguf.package: no installed package 'no_such_package_xyz'",
        "make install",
    ),
    "sweep direction against the objective": (
        lambda d: ["hydra.sweeper.direction=minimize", "objective.metric=val/tool_exact"],
        "hydra.sweeper.direction=minimize contradicts objective.metric=val/tool_exact",
        "hydra.sweeper.direction=auto",
    ),
    "two directions for one objective": (
        lambda d: ["hydra.sweeper.direction=[minimize,minimize]"],
        "gives 2 directions, but objective.metric=['val/loss'] names 1",
        "objective.metric=[...]",
    ),
    "a run metric judging the validations": (
        lambda d: ["objective.metric=[trainable_params,val/loss]"],
        "objective.metric: the first of a list must be one of",
        "it judges each validation",
    ),
    "patience on a Pareto front": (
        lambda d: ["objective.metric=[val/loss,trainable_params]", "hydra.sweeper.patience=2"],
        "hydra.sweeper.patience=2: stops once the best stops improving",
        "Pareto front",
    ),
    # search spaces
    "empty interval": (
        lambda d: ["optim.lr=interval(1e-3,1e-5)"],
        "optim.lr=interval(1e-3,1e-5)",
        "low <= high",
    ),
    "empty range": (lambda d: ["lora.r=range(8,4)"], "lora.r=range(8,4)", "start < stop"),
    "log interval from 0": (lambda d: ["optim.lr=tag(log,interval(0,1e-3))"], "optim.lr", "0 < low"),
    "unknown distribution": (lambda d: ["optim.lr=gauss(1,2)"], "gauss", "Available: bool,choice"),
    "empty choice": (lambda d: ["lora.r=choice()"], "lora.r=choice()", "empty choice is not legal"),
    "search over an unknown key": (
        lambda d: ["lora.rnk=choice(8,16)"],
        "lora.rnk",
        "keys under lora: ['alpha'",
    ),
    "choice with an invalid value": (
        lambda d: ["lora.dropout=choice(0.0,1.5)"],
        "lora.dropout",
        "less than 1",
    ),
    "enqueued recipe with a typo": (
        lambda d: ["hydra.sweeper.enqueue=[{recipe:mine,params:{lora.rnk:8}}]"],
        "hydra.sweeper.enqueue[0] (mine)",
        "keys under lora",
    ),
    "search space file with two mistakes": (
        lambda d: [TEST_CONF, "hparams_search=bad_space"],
        "hydra.sweeper.params.lora.r: Error parsing override 'lora.r=gauss(16, 4)'",
        "hydra.sweeper.params.optim.lr",  # both reported at once; the grammar is spelled out
    ),
    # sweeper options
    "pruner typo": (
        lambda d: ["hydra/sweeper/pruner=mediam"],
        "Could not find 'hydra/sweeper/pruner/mediam'",
        "median",
    ),
    "pruner by its old spelling": (
        lambda d: ["hydra.sweeper.pruner=median"],
        "hydra.sweeper.pruner=median: the pruner is a config group",
        "write hydra/sweeper/pruner=median",
    ),
    "pruner_kwargs (gone)": (
        lambda d: ["hydra.sweeper.pruner_kwargs={n_warmup_steps: 4}"],
        "hydra.sweeper.pruner_kwargs is gone",
        "hydra.sweeper.pruner.n_warmup_steps=4",
    ),
    "zero trials": (lambda d: ["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials", ">= 1"),
    "direction typo": (lambda d: ["hydra.sweeper.direction=minimise"], "minimise", "minimize or maximize"),
    "storage timeout of 0": (
        lambda d: ["hydra.sweeper.storage_timeout=0"],
        "hydra.sweeper.storage_timeout must be >= 1",
        "(seconds)",
    ),
    "negative memory limit": (
        lambda d: ["hydra.sweeper.max_memory_gb=-1"],
        "hydra.sweeper.max_memory_gb must be > 0",
        "or null",
    ),
    "failure rate beyond 1": (
        lambda d: ["hydra.sweeper.max_failure_rate=1.5"],
        "hydra.sweeper.max_failure_rate must be between 0 and 1",
        "got 1.5",
    ),
    "failure rate and count both": (
        lambda d: ["hydra.sweeper.max_failure_rate=0.5", "hydra.sweeper.max_failures=3"],
        "hydra.sweeper.max_failure_rate=0.5 and hydra.sweeper.max_failures=3 both limit failed trials",
        "set one",
    ),
    "grid sampler over a continuous interval": (
        lambda d: ["hydra/sweeper/sampler=grid"],  # the qlora space searches optim.lr on a log interval
        "hydra/sweeper/sampler=grid: optim.lr: the grid sampler needs a finite set of values",
        "choice(a, b, ...) or range(start, stop, step) for optim.lr",
    ),
    "search_space (removed upstream)": (
        lambda d: ["hydra.sweeper.search_space={lora.r:choice(8,16)}"],
        "Key 'search_space' not in 'SweeplabSweeperConf'",
        "custom_search_space",
    ),
    # config-named code: Hydra's execution whitelist, as the upstream sweeper applies it
    "custom search space that runs a shell": (
        lambda d: ["hydra.sweeper.custom_search_space=os.system"],
        "hydra.sweeper.custom_search_space=os.system",
        "Target 'os.system' cannot be authorized by the Hydra execution whitelist",
    ),
    "custom search space the app does not trust": (
        lambda d: ["hydra.sweeper.custom_search_space=tests.search_space.warmup"],
        "hydra.sweeper.custom_search_space=tests.search_space.warmup: Target 'tests.search_space.warmup' is "
        "not in the Hydra execution whitelist",
        "SWEEPLAB_TRUSTED_TARGETS=my_pkg.*",
    ),
    "pruner that deletes files": (
        lambda d: [ASHA, "hydra.sweeper.pruner._target_=shutil.rmtree"],
        "hydra.sweeper.pruner._target_=shutil.rmtree",
        "not in the Hydra execution whitelist",
    ),
    # pruner settings that would raise in every trial or never prune
    "an argument the pruner does not take": (
        lambda d: [ASHA, "+hydra.sweeper.pruner.n_warmup_steps=4", *SHORT],
        "hydra.sweeper.pruner: ['n_warmup_steps'] not arguments of optuna.pruners.SuccessiveHalvingPruner",
        "'min_resource'",
    ),
    "pruner argument out of range": (
        lambda d: [ASHA, "hydra.sweeper.pruner.reduction_factor=1", *SHORT],
        "hydra.sweeper.pruner (optuna.pruners.SuccessiveHalvingPruner)",
        "reduction_factor >= 2",
    ),
    "median warmup beyond the run": (
        lambda d: ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_warmup_steps=100", *SHORT],
        "hydra.sweeper.pruner.n_warmup_steps=100: the pruner cannot act before step 100",
        "at step 8; lower n_warmup_steps, or set hydra/sweeper/pruner=none",
    ),
    "successive halving rung beyond the run": (
        lambda d: [ASHA, "hydra.sweeper.pruner.min_resource=10", *SHORT],
        "hydra.sweeper.pruner.min_resource=10",
        "lower min_resource",
    ),
    "hyperband max_resource that is not the run's length": (
        lambda d: ["hydra/sweeper/pruner=hyperband", "hydra.sweeper.pruner.max_resource=50", *SHORT],
        "hydra.sweeper.pruner.max_resource=50 must be trainer.max_steps=12",
        "or auto",
    ),
    # what every trial would start from
    "fixed value every trial refuses": (lambda d: ["lora.dropout=1.5"], "lora.dropout", "less than 1"),
    "sweep over a missing data file": (
        lambda d: ["data=jsonl", f"data.path={d / 'nope.jsonl'}"],
        "nope.jsonl",
        "no such file",
    ),
    # storage URLs
    "unreachable postgres": (
        lambda d: ["hydra.sweeper.storage=postgresql+psycopg://nobody:s3cret@127.0.0.1:1/nope"],
        "postgresql+psycopg://nobody:***@127.0.0.1:1/nope",
        "sqlite:///relative/path.db",
    ),
    "unknown scheme": (lambda d: ["hydra.sweeper.storage=foo://x"], "'foo'", "postgresql+psycopg://user"),
    "driver not installed": (lambda d: ["hydra.sweeper.storage=mysql://x/y"], "mysql://x/y", "sqlite:///"),
    "path instead of a URL": (lambda d: ["hydra.sweeper.storage=optuna.db"], "'optuna.db'", "sqlite:///"),
    "in-memory sqlite": (lambda d: ["hydra.sweeper.storage=sqlite://"], "in-memory", "sqlite:///relative"),
    "sqlite file that is no database": (
        lambda d: [f"hydra.sweeper.storage=sqlite:///{write(d / 'notes.txt', 'my notes')}"],
        "notes.txt exists and is not an SQLite database",
        "name a new or existing .db file",
    ),
    "sqlite under a file": (
        lambda d: [f"hydra.sweeper.storage=sqlite:///{a_file(d)}/optuna.db"],
        "a-file/optuna.db",
        "is a file, not a directory",
    ),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_bad_sweep_fails_before_any_trial(case: str, tmp_path: Path) -> None:
    make_overrides, needle, allowed = SWEEP_CASES[case]
    out = tmp_path / "outputs"
    result = sweep(out, *make_overrides(tmp_path))
    assert_clean_failure(result, needle, allowed)
    assert "s3cret" not in result.stdout + result.stderr
    assert not (out / "sweeps").exists(), "no study, storage or trial dir may exist"
    assert not list(tmp_path.rglob("*.db*")), "no database or lock file may be created"


def test_a_callback_that_would_delete_files_is_refused(tmp_path: Path) -> None:
    """callbacks.extra names code: a config cannot trust it itself (Hydra's execution whitelist)."""
    keep = tmp_path / "keep"
    keep.mkdir()
    write(keep / "notes.txt", "mine")
    result = run_train(
        *TINY, f"callbacks.extra=[{{_target_: shutil.rmtree, path: {keep}}}]", output_root=tmp_path
    )
    key = "callbacks.extra[0]._target_=shutil.rmtree"
    assert_clean_failure(
        result, f"{key}: Target 'shutil.rmtree' is not in the Hydra execution whitelist", TRUST_ENV
    )
    assert (keep / "notes.txt").read_text() == "mine"


def test_trusted_custom_search_space_that_does_not_import(tmp_path: Path) -> None:
    """Trusted (SWEEPLAB_TRUSTED_TARGETS), so Hydra looks it up: the error names the key and the lookup."""
    target = "no_such_module_xyz.fn"
    result = sweep(
        tmp_path / "outputs",
        f"hydra.sweeper.custom_search_space={target}",
        env={TRUST_ENV: "no_such_module_xyz.*"},
    )
    assert_clean_failure(
        result, f"hydra.sweeper.custom_search_space={target}", f"Error locating target '{target}'"
    )
    assert not (tmp_path / "outputs" / "sweeps").exists()


def test_storage_that_is_no_database_is_left_untouched(tmp_path: Path) -> None:
    notes = write(tmp_path / "notes.txt", "line one\nline two\n")
    before = notes.read_bytes()
    result = sweep(tmp_path / "outputs", f"hydra.sweeper.storage=sqlite:///{notes}")
    assert_clean_failure(result, f"hydra.sweeper.storage=sqlite:///{notes}", "not an SQLite database")
    assert result.returncode == 2
    assert notes.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no lock file beside it either


@pytest.mark.parametrize(
    "command",
    [
        lambda out: run_train(*TINY, "lora.r=0", output_root=out, env={"HYDRA_FULL_ERROR": "1"}),
        lambda out: sweep(out, "hydra.sweeper.n_trials=0", env={"HYDRA_FULL_ERROR": "1"}),
    ],
    ids=["run", "sweep"],
)
def test_full_error_shows_the_traceback(command, tmp_path: Path) -> None:
    result = command(tmp_path / "outputs")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr, result.stderr[-2000:]
