"""The sweep's phases around the trials: an lr range test first, the centre point, and a compute budget.

The range test is a job of its own (the train app with lr_range_test=...), not an Optuna trial: its
loss curve says where the lr range lies, it trains no adapter, and TPE must not read it as a bad trial.
Its result is a study attr, so workers, resumed sweeps and the report all see the same range.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

log = logging.getLogger(__name__)

RANGE_ATTR = "lr_range_test"  # the study's range test result (sweeplab.training.lr_range.suggest)
CLAIM_ATTR = "lr_range_test_claim"  # {host, pid}: the worker running it; the others wait
RANGE_DIR = "lr_range_test"  # its run dir under the sweep dir, beside the trials' numbered ones
LR = "optim.lr"
POLL_S = 5.0
CLAIM_STALE_S = 3600.0  # a range test is a few dozen steps; older than this, its worker is gone


def centre_point(distributions: dict[str, Any]) -> dict[str, Any]:
    """Each searched key's first choice, or the (log-)middle of its interval: where the range test runs."""
    point = {}
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            point[name] = dist.choices[0]
        elif isinstance(dist, FloatDistribution | IntDistribution):
            mid = math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2
            point[name] = round(mid) if isinstance(dist, IntDistribution) else mid
    return point


def narrowed(distributions: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    """The space with optim.lr limited to the range test's range (unchanged without a usable result)."""
    if not result or "low" not in result or LR not in distributions:
        return distributions
    return {**distributions, LR: FloatDistribution(result["low"], result["high"], log=True)}


def wanted(config: Any, distributions: dict[str, Any]) -> bool:
    """A range test is configured and lr is searched on a log interval (the range it narrows)."""
    test = config.hydra.sweeper.get("lr_range_test")
    dist = distributions.get(LR)
    return bool(test) and isinstance(dist, FloatDistribution) and dist.log


def _alive(claim: dict[str, Any]) -> bool:
    """The worker holding the claim still runs the test: its pid on this machine, or (another
    machine's) a claim younger than CLAIM_STALE_S."""
    if claim.get("host") != socket.gethostname():
        return time.time() - float(claim.get("time", 0)) < CLAIM_STALE_S
    try:
        os.kill(int(claim["pid"]), 0)
    except (OSError, ValueError):
        return False
    return True


def ensure_range_test(sweeper: Any, study: optuna.Study, lock: Any, distributions, fixed, fixed_overrides):
    """The study's range test result, run by the first worker to get here; the others wait for it.

    Returns the result (or None when none is wanted). After a result first exists, the centre point
    and then the recipes are queued: the recipes run as anchors after a trial the test placed."""
    if not wanted(sweeper.config, distributions):
        return None
    while True:
        with lock():
            result = study.user_attrs.get(RANGE_ATTR)
            claim = study.user_attrs.get(CLAIM_ATTR)
            mine = result is None and (claim is None or not _alive(claim))
            if mine:
                claim = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
                study.set_user_attr(CLAIM_ATTR, claim)
        if result is not None:
            return result
        if mine:
            break
        time.sleep(POLL_S)
    result = run_range_test(sweeper, study, distributions, fixed, fixed_overrides)
    with lock():
        study.set_user_attr(RANGE_ATTR, result)
        if not study.user_attrs.get("centre_enqueued"):
            point = centre_point(narrowed(distributions, result))
            if "centre" in result:
                point[LR] = result["centre"]
            study.enqueue_trial(point, user_attrs={"role": "centre"})
            study.set_user_attr("centre_enqueued", True)
    return result


def run_range_test(sweeper: Any, study: optuna.Study, distributions, fixed, fixed_overrides) -> dict:
    """Launch the range test job through the sweep's own launcher; a failure leaves the range as given."""
    test = dict(sweeper.config.hydra.sweeper.lr_range_test)
    span = distributions[LR]
    point = {k: v for k, v in centre_point(distributions).items() if k != LR}
    overrides = [f"{k}={v}" for k, v in {**point, **fixed}.items()] + list(fixed_overrides)
    overrides += [
        f"lr_range_test={{steps: {test.get('steps', 20)}, min_lr: {span.low}, max_lr: {span.high}}}",
        f"hydra.sweep.subdir={RANGE_DIR}",
    ]
    log.info(
        "lr range test: %d steps from %.3g to %.3g at %s", test.get("steps", 20), span.low, span.high, point
    )
    started = time.perf_counter()
    [ret] = sweeper.launcher.launch([overrides], initial_job_idx=len(study.trials))
    try:
        ret.return_value  # noqa: B018 - re-raises the job's exception
        path = Path(sweeper.sweep_dir) / RANGE_DIR / "lr_range.json"
        result = json.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - the sweep goes on over the configured range
        log.warning(
            "lr range test failed (%s: %s); searching optim.lr over its whole range", type(exc).__name__, exc
        )
        return {"failed": f"{type(exc).__name__}: {exc}"[:2000], "steps": 0}
    result["seconds"] = time.perf_counter() - started
    result["point"] = point
    log.info(
        "lr range test: lowest loss at lr %.3g; trials search optim.lr in [%.3g, %.3g]",
        result["lr_at_min_loss"],
        result["low"],
        result["high"],
    )
    return result


def judge_recipes(recipes: Any, result: dict[str, Any] | None) -> dict[str, str]:
    """recipe name -> where its lr lies against the range test's range ('' inside); logged once."""
    if not result or "low" not in result:
        return {}
    verdicts = {}
    for recipe in recipes:
        lr = recipe["params"].get(LR)
        if lr is None:
            continue
        low, high = result["low"], result["high"]
        if lr < low or lr > high:
            factor = low / lr if lr < low else lr / high
            verdicts[recipe["recipe"]] = (
                f"{factor:.1f}x {'below' if lr < low else 'above'} [{low:.3g}, {high:.3g}]"
            )
            log.warning(
                "recipe %s: optim.lr=%g is %s, the range test's range; it runs as an anchor (the pruner "
                "stops it at a rung if it is behind)",
                recipe["recipe"],
                lr,
                verdicts[recipe["recipe"]],
            )
        else:
            verdicts[recipe["recipe"]] = ""
    return verdicts


def steps_of(trial: optuna.trial.FrozenTrial) -> int:
    """Optimizer steps a trial trained: its own count, else its last report (a running or killed one)."""
    if "steps" in trial.user_attrs:
        return int(trial.user_attrs["steps"])
    return max(trial.intermediate_values, default=0)


def spent(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> int:
    """Every optimizer step the study has cost: trials of any state, and the range test."""
    return sum(steps_of(t) for t in trials) + int((study.user_attrs.get(RANGE_ATTR) or {}).get("steps", 0))


def budget_left(study, trials, budget: float | None, max_steps: int) -> bool:
    """Room for one more whole trial within budget (in runs of max_steps): a hard cap, so the study never
    trains more than it was given, even when the trial outlives every rung. None: no budget."""
    if budget is None:
        return True
    used = spent(study, trials)
    # Trials running in other workers may still train to their end: their steps are reserved.
    reserved = sum(max(0, max_steps - steps_of(t)) for t in trials if t.state == TrialState.RUNNING)
    if used + reserved + max_steps <= budget * max_steps:
        return True
    log.info(
        "compute budget: %d optimizer steps spent = %.2f runs of %d; one more trial would pass "
        "hydra.sweeper.budget=%g: stopping",
        used,
        used / max_steps,
        max_steps,
        budget,
    )
    return False


def before_trials(sweeper: Any, study: optuna.Study, lock: Any, distributions, fixed, fixed_overrides):
    """The range test (when configured), then the recipes behind its centre point: the space to ask in."""
    from hydra_plugins.sweeplab_sweeper.study import enqueue_recipes

    result = ensure_range_test(sweeper, study, lock, distributions, fixed, fixed_overrides)
    if result is None:
        return distributions
    with lock():  # once per study: the recipes queue behind the centre point
        notes = judge_recipes(sweeper.enqueue, result) if not study.user_attrs.get("enqueued") else {}
        enqueue_recipes(study, sweeper.enqueue, distributions, fixed, notes)
    return narrowed(distributions, result)
