"""Sweep inputs checked before any storage, study or trial exists: one line per problem, exit 2.

Without these, a typo in the search space or storage URL surfaced as an Optuna/SQLAlchemy traceback
after the study was created, or as every trial failing the same way.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

import optuna
from hydra.errors import InstantiationException
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import CategoricalDistribution

from hydra_plugins.sweeplab_sweeper.grid import grid_problems
from sweeplab.config import validate
from sweeplab.errors import ConfigError, DataError
from sweeplab.sweep.pruners import PRUNER_WHITELIST, build_pruner, pruner_arguments, pruner_node
from sweeplab.sweep.storage_retry import call_with_retry, transient
from sweeplab.trust import resolve_target

STORAGES = (
    "use sqlite:///relative/path.db, sqlite:////absolute/path.db or "
    "postgresql+psycopg://user:password@host:port/dbname (any SQLAlchemy URL whose driver is installed)"
)
SPACE = (
    "a search space is choice(a, b, ...), range(start, stop[, step]) with start < stop, "
    "interval(low, high) with low <= high, or tag(log, interval(low, high)) with 0 < low"
)
UNSET = object()


def fail(what: str, problems: list[str]) -> None:
    """SystemExit passes Hydra's error handler, so the user sees these lines and no traceback."""
    if not problems:
        return
    message = f"{what}:\n  " + "\n  ".join(problems)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise ConfigError(message)  # the full traceback, as Hydra gives for its own errors
    print(f"sweeplab: error: {message}", file=sys.stderr)
    sys.exit(2)


def rank_problems() -> list[str]:
    """Under torchrun every rank would run its own sweeper and claim its own trials."""
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return []
    return [
        f"this sweep runs in {os.environ['WORLD_SIZE']} processes started by torchrun/srun (WORLD_SIZE); "
        "start the sweep once and let each trial start its ranks: trainer.strategy=ddp trainer.devices=N "
        "(torchrun runs a single trial: drop --multirun)"
    ]


def option_problems(options: dict[str, Any]) -> list[str]:
    """Keys upstream accepts and then trips over later (a zero-trial study, an Optuna ValueError)."""
    problems = []
    try:
        pruner_node(options["pruner"])
    except ValueError as exc:
        problems.append(str(exc))
    if options.get("pruner_kwargs") is not None:
        problems.append(
            "hydra.sweeper.pruner_kwargs is gone: a pruner's arguments are keys of its own node, which "
            "hydra/sweeper/pruner=NAME selects (e.g. hydra/sweeper/pruner=median "
            "hydra.sweeper.pruner.n_warmup_steps=4); move them there"
        )
    for i, recipe in enumerate(options["enqueue"] or []):
        if not isinstance(recipe, dict | DictConfig) or set(recipe) != {"recipe", "params"}:
            problems.append(f"hydra.sweeper.enqueue[{i}] must be {{recipe: NAME, params: {{key: value}}}}")
    if options["n_jobs"] < 1:
        problems.append(f"hydra.sweeper.n_jobs must be >= 1, got {options['n_jobs']}")
    if options["n_trials"] < 1:
        problems.append(f"hydra.sweeper.n_trials must be >= 1, got {options['n_trials']}")
    direction = options["direction"]
    names = list(direction) if isinstance(direction, list | ListConfig) else [direction]
    for name in [getattr(d, "name", d) for d in names]:
        if name not in ("auto", "minimize", "maximize"):
            problems.append(f"hydra.sweeper.direction must be auto, minimize or maximize, got {name!r}")
    if not names:
        problems.append("hydra.sweeper.direction must be a direction or a list of them, got []")
    if options["max_failures"] is not None and options["max_failures"] < 0:
        problems.append(f"hydra.sweeper.max_failures must be >= 0 or null, got {options['max_failures']}")
    if (beat := options["heartbeat_interval"]) < 1:
        problems.append(f"hydra.sweeper.heartbeat_interval must be >= 1 (seconds), got {beat}")
    if (timeout := options["storage_timeout"]) < 1:
        problems.append(f"hydra.sweeper.storage_timeout must be >= 1 (seconds), got {timeout}")
    if (grace := options["grace_period"]) is not None and beat >= 1 and timeout >= 1:
        from hydra_plugins.sweeplab_sweeper.storage import min_grace_period

        if grace < (least := min_grace_period(beat, timeout)):
            problems.append(
                f"hydra.sweeper.grace_period={grace} is below hydra.sweeper.storage_timeout={timeout} + "
                f"hydra.sweeper.heartbeat_interval={beat} + {least - timeout - beat} s of retry backoff = "
                f"{least}: a worker on another machine riding out a storage outage would have its trial "
                "failed as lost; set "
                f"grace_period >= {least}, or null (derived from the two)"
            )
    if (retries := options["max_retries"]) < 0:
        problems.append(f"hydra.sweeper.max_retries must be >= 0, got {retries}")
    if (patience := options["patience"]) is not None and patience < 1:
        problems.append(f"hydra.sweeper.patience must be >= 1 (finished trials) or null, got {patience}")
    if (limit := options["max_memory_gb"]) is not None and limit <= 0:
        problems.append(f"hydra.sweeper.max_memory_gb must be > 0 (GB) or null (no check), got {limit}")
    if (keep := options.get("keep_checkpoints")) is not None and (not isinstance(keep, int) or keep < 0):
        problems.append(
            f"hydra.sweeper.keep_checkpoints must be an integer >= 0 (the best N finished trials keep "
            f"theirs) or null (keep every checkpoint), got {keep!r}"
        )
    if (budget := options.get("budget")) is not None and budget <= 0:
        problems.append(f"hydra.sweeper.budget must be > 0 (runs of trainer.max_steps) or null, got {budget}")
    test = options.get("lr_range_test")
    if test is not None:
        unknown = sorted(set(test) - {"steps"})
        if unknown:
            problems.append(f"hydra.sweeper.lr_range_test: {unknown} not keys; expected {{steps: N}} or null")
        elif not isinstance(test.get("steps", 20), int) or test.get("steps", 20) < 3:
            problems.append(
                f"hydra.sweeper.lr_range_test.steps must be an integer >= 3, got {test.get('steps')}"
            )
    if (rate := options["max_failure_rate"]) is not None:
        if not 0.0 <= rate <= 1.0:
            problems.append(
                f"hydra.sweeper.max_failure_rate must be between 0 and 1 (the share of n_trials that may "
                f"fail) or null, got {rate}"
            )
        elif options["max_failures"] is not None:
            problems.append(
                f"hydra.sweeper.max_failure_rate={rate} and hydra.sweeper.max_failures="
                f"{options['max_failures']} both limit failed trials; set one (the rate is "
                "floor(rate * n_trials) failures)"
            )
    return problems


def pruner_problems(pruner: Any, config: DictConfig) -> list[str]:
    """Pruner settings that would raise in every trial, or silently never prune these trials."""
    try:
        node = pruner_node(pruner)
    except ValueError:
        return []  # option_problems reports it
    key = "hydra.sweeper.pruner"
    try:
        cls = resolve_target(f"{key}._target_", node._target_, PRUNER_WHITELIST).func
        kwargs = pruner_arguments(node, None)
    except (ConfigError, InstantiationException) as exc:
        return [_oneline(exc)]
    if cls is optuna.pruners.NopPruner:
        return []
    allowed = [p for p in inspect.signature(cls).parameters if p != "self"]
    if unknown := sorted(set(kwargs) - set(allowed)):
        return [f"{key}: {unknown} not arguments of {node._target_} (its arguments: {allowed})"]
    try:
        rc = validate(config)
    except ConfigError:
        rc = None  # config_problems reports it
    max_steps = rc.trainer.max_steps if rc is not None else None
    try:
        build_pruner(node, max_steps)
    except (TypeError, ValueError, InstantiationException) as exc:
        return [f"{key} ({node._target_}): {_oneline(exc)}"]
    if rc is None:
        return []
    every = rc.trainer.val_every_n_steps
    # Pruning stops a trial at a validation inside fit; the one at max_steps saves nothing.
    last = (max_steps - 1) // every * every
    where = f"trainer.max_steps={max_steps} with trainer.val_every_n_steps={every}"
    if last == 0:
        return []  # a quick sweep: trials validate at their end only and nothing is pruned (end_only_note)
    kwargs = pruner_arguments(node, max_steps)
    first, arg = 0, None
    if "n_warmup_steps" in allowed:  # median, percentile
        first, arg = kwargs.get("n_warmup_steps", 0), "n_warmup_steps"
    elif isinstance(kwargs.get("min_resource", "auto"), int):  # successive_halving, hyperband
        rate = kwargs.get("min_early_stopping_rate", 0)
        first, arg = kwargs["min_resource"] * kwargs.get("reduction_factor", 4) ** rate, "min_resource"
    if first > last:
        return [
            f"{key}.{arg}={kwargs[arg]}: the pruner cannot act before step {first}, but {where} validates "
            f"last before the end at step {last}; lower {arg}, or set hydra/sweeper/pruner=none"
        ]
    if cls is optuna.pruners.HyperbandPruner and kwargs["max_resource"] != max_steps:
        return [
            f"{key}.max_resource={kwargs['max_resource']} must be trainer.max_steps={max_steps} (a trial's "
            "full length, which sets Hyperband's brackets) or auto"
        ]
    return []


def end_only_note(pruner: Any, config: DictConfig) -> str | None:
    """A sweep of trials shorter than one validation interval runs, unpruned, and says so once."""
    try:
        rc = validate(config)
        target = pruner_node(pruner)._target_
    except (ConfigError, ValueError):
        return None
    max_steps, every = rc.trainer.max_steps, rc.trainer.val_every_n_steps
    if target == "optuna.pruners.NopPruner" or (max_steps - 1) // every > 0:
        return None
    return (
        f"trainer.max_steps={max_steps} <= trainer.val_every_n_steps={every}: each trial validates once, "
        f"at its end, and the pruner ({target}) prunes nothing (lower trainer.val_every_n_steps to prune)"
    )


def grid_sampler_problems(params: DictConfig | None, arguments: list[str]) -> list[str]:
    """hydra/sweeper/sampler=grid: every searched key needs a finite list of values."""
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    distributions, fixed, _ = create_params_from_overrides(lines)
    problems = grid_problems({k: d for k, d in distributions.items() if k not in fixed})
    return [f"hydra/sweeper/sampler=grid: {p}" for p in problems]


def space_problems(
    params: DictConfig | None, arguments: list[str], config: DictConfig, own_task: bool = True
) -> list[str]:
    """Each search-space entry parses, names a real key, and offers only values the config accepts
    (sweeplab's schema: its training task only; another app's values are its own to judge)."""
    sources = [(f"hydra.sweeper.params.{k}", f"{k}={v}") for k, v in (params or {}).items()]
    sources += [(arg, arg) for arg in arguments]
    problems = []
    for where, line in sources:
        try:
            distributions, fixed, _ = create_params_from_overrides([line])
        except Exception as exc:  # noqa: BLE001 - Hydra's parser and Optuna raise several types
            problems.append(f"{where}: {_oneline(exc)}; {SPACE}")
            continue
        for key, dist in distributions.items():
            problem = _key_problem(key, config)
            if problem is None and own_task:
                values = dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)
                problem = _values_problem(key, values, config)
            if problem:
                problems.append(f"{where}: {problem}")
    return problems


def enqueue_problems(enqueue: list[Any], config: DictConfig, own_task: bool = True) -> list[str]:
    """A hand-set recipe runs first in every new study: a typo there fails the first trials."""
    problems = []
    for i, recipe in enumerate(enqueue or []):
        for key, value in recipe["params"].items():
            problem = _key_problem(key, config) or (own_task and _values_problem(key, [value], config))
            if problem:
                problems.append(f"hydra.sweeper.enqueue[{i}] ({recipe['recipe']}): {problem}")
    return problems


def _oneline(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines()]
    # Hydra's first line repeats every override; its last points at a web page.
    lines = [ln for ln in lines if ln and not ln.startswith(("Error when parsing index", "See https://"))]
    return "; ".join(ln.rstrip(".") for ln in lines) or type(exc).__name__


def _key_problem(key: str, config: DictConfig) -> str | None:
    if key.startswith(("+", "~", "hydra.", "hydra/")) or "/" in key:
        return None  # additions, deletions and group paths: Hydra itself checks those per trial
    if OmegaConf.select(config, key, default=UNSET) is not UNSET:
        return None
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(config, parent, default=None) if parent else config
    keys = sorted(k for k in node if k != "hydra") if isinstance(node, DictConfig) else []
    return f"{key} is not a config key; keys under {parent or 'the root'}: {keys}"


def names_key(line: str, key: str) -> bool:
    """Whether an error line is about `key`: the key as a key, not inside a word or another key
    (`y` in "key", `lora.r` in "lora.rank"), nor quoted in a list of allowed keys."""
    return re.search(rf"(?<![\w.'\"]){re.escape(key)}(?![\w'\"]|\.\w)", line) is not None


def _values_problem(key: str, values: Any, config: DictConfig) -> str | None:
    """A value the schema refuses would fail every trial that draws it, after the study was created."""
    if isinstance(OmegaConf.select(config, key), DictConfig):
        return None  # a config group choice (model=choice(base, tiny)): composed per trial
    bad = []
    for value in values:
        trial = config.copy()
        OmegaConf.update(trial, key, value, merge=False)
        try:
            validate(trial)
        except ConfigError as err:
            leaf = [ln.strip() for ln in str(err).splitlines() if names_key(ln, key)]
            if leaf:
                bad.append(f"{value!r} ({leaf[0]})")
    return f"{key} would be given invalid values: {', '.join(bad)}" if bad else None


def config_problems(config: DictConfig, direction: Any = "auto") -> list[str]:
    """The config every trial starts from: a bad fixed value or data file would fail them all."""
    try:
        rc = validate(config)
    except ConfigError as err:
        return str(err).removeprefix("invalid config:\n").strip().splitlines()
    names = list(direction) if isinstance(direction, list | ListConfig) else [direction]
    names = [getattr(d, "name", d) for d in names]
    metrics, senses = rc.objective.metrics, rc.objective.resolved_directions
    if names != ["auto"] and len(names) != len(metrics):
        return [
            f"hydra.sweeper.direction={names} gives {len(names)} directions, but objective.metric={metrics} "
            f"names {len(metrics)}: give a list of metrics (objective.metric=[...]) or "
            "hydra.sweeper.direction=auto"
        ]
    for name, metric, sense in zip(
        names * len(metrics) if names == ["auto"] else names, metrics, senses, strict=True
    ):
        if name not in ("auto", sense):
            return [
                f"hydra.sweeper.direction={name} contradicts objective.metric={metric}, which a sweep must "
                f"{sense}; set hydra.sweeper.direction=auto"
            ]
    if rc.model.gguf is not None:  # a missing wheel or file would fail every trial
        from sweeplab.models.gguf import locate

        try:
            locate(rc.model.gguf)
        except ConfigError as err:
            return [str(err)]
    if rc.data.source not in ("jsonl", "text"):
        return []
    from sweeplab.data.readers import read_jsonl, read_text

    reader = read_jsonl if rc.data.source == "jsonl" else read_text
    try:
        for path in (rc.data.path, rc.data.val_path, rc.data.test_path):
            if path:
                reader(Path(path))
    except DataError as err:
        return [str(err)]
    return []


# What PostgreSQL answers while it restarts: the server is there (no wrong URL), so a user's command started
# now rides it out for the whole storage_timeout.
RESTARTING = tuple(
    f"the database system is {state}"
    for state in ("starting up", "shutting down", "in recovery mode", "not yet accepting connections")
)
# A refused connection is a typo as often as a restart: a user's command waits this long, no longer.
REFUSED_WAIT_S = 10.0


def storage_problem(url: str, timeout: float = 0, grace: float = 0) -> str | None:
    """Parse, load the driver and (for servers) connect; never print a password.

    A worker (`timeout`) rides out any outage, as its later storage calls do: its main process reached
    the server a moment ago. A user's command (`grace`) rides out a server restart: up to `grace` s while
    the server answers that it is restarting, up to REFUSED_WAIT_S while it answers nothing.
    """
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return f"hydra.sweeper.storage: {url!r} is not a database URL; {STORAGES}"
    shown = parsed.render_as_string(hide_password=True)
    where = f"hydra.sweeper.storage={shown}"
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_problem(where, parsed.database)
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"{where}: unknown database scheme {parsed.drivername!r}; {STORAGES}"
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        return f"{where}: the driver for {parsed.drivername!r} is not installed ({exc}); {STORAGES}"
    connect_args = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
    engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
    last: list[BaseException] = []  # the driver's own words, shown rather than "unreachable for over N s"

    def connect() -> None:
        try:
            with engine.connect():
                pass
        except Exception as exc:
            last[:] = [exc]
            raise

    try:
        try:
            call_with_retry(connect, url, timeout) if timeout else connect()
        except Exception as exc:
            if not (grace and transient(exc)):
                raise
            restarting = any(text in str(exc) for text in RESTARTING)
            call_with_retry(connect, url, grace if restarting else min(grace, REFUSED_WAIT_S))
    except Exception as exc:  # noqa: BLE001 - every driver has its own errors; the message is what matters
        exc = last[0] if last else exc
        reason = _oneline(getattr(exc, "orig", None) or exc)
        if parsed.password:
            reason = reason.replace(parsed.password, "***")
        return f"{where}: cannot connect: {reason}; {STORAGES}"
    finally:
        engine.dispose()
    return None


def cluster_problems(kind: str | None, url: str, launcher: DictConfig, wait: bool) -> list[str]:
    """Worker jobs (kind: slurm | local) need a storage they can all reach, and one worker per job."""
    if kind is None:
        if wait:
            return []
        return [
            "hydra.sweeper.wait=false needs hydra/launcher=submitit_slurm or submitit_local (workers as "
            "jobs); with this launcher the command is itself a worker and cannot return before the sweep ends"
        ]
    problems = []
    if kind == "slurm" and url.startswith("sqlite"):
        # Local jobs (submitit_local) share one machine and one lock file, as n_jobs workers always did.
        problems.append(
            f"hydra.sweeper.storage={url}: SLURM workers on other nodes need a database server they can all "
            "reach (SQLite on a shared filesystem loses writes and locks); set hydra.sweeper.storage="
            "postgresql+psycopg://user:password@host:5432/db"
        )
    for key in ("nodes", "tasks_per_node"):
        if launcher.get(key, 1) != 1:
            problems.append(
                f"hydra.launcher.{key}={launcher[key]}: must be 1 (each job is one sweep worker); more "
                "workers: hydra.sweeper.n_jobs=N, GPUs per worker: hydra.launcher.gpus_per_node=N"
            )
    if launcher.get("max_num_timeout", 0):
        problems.append(
            f"hydra.launcher.max_num_timeout={launcher.max_num_timeout}: worker jobs are not requeued after "
            "their time limit (the running trial is stored FAIL and queued again; the next worker or a "
            "rerun resumes it from last.ckpt); leave it 0"
        )
    return problems


def _sqlite_problem(where: str, database: str | None) -> str | None:
    if not database or database == ":memory:":
        return f"{where}: an in-memory database keeps no study for workers or a resume; {STORAGES}"
    path = Path(database).resolve()
    if path.is_dir():
        return f"{where}: {path} is a directory; name a database file in it, e.g. {path / 'optuna.db'}"
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as handle:  # read only: the file must stay exactly as it is
            header = handle.read(16)
        if header != b"SQLite format 3\x00":
            return f"{where}: {path} exists and is not an SQLite database; name a new or existing .db file"
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        return f"{where}: cannot create {path.parent}: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{where}: cannot create the database in {existing}: permission denied"
    return None
