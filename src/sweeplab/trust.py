"""Code a config names runs only where Hydra 1.4's execution whitelist allows it; refusals name the key.

Hydra's threat model: a config may come from anyone, so it cannot widen the whitelist; the app's code
(and here the environment of the command the user starts) can. A `_target_` that names itself as
trusted would let a config call shutil.rmtree.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import execution_whitelist, instantiate

from sweeplab.errors import ConfigError

TRUST_ENV = "SWEEPLAB_TRUSTED_TARGETS"
# Our own classes, Hydra plugins, Optuna samplers, Python logging.
BASE_TRUSTED = ["sweeplab.*", "hydra_plugins.*", "hydra._internal.*", "optuna.samplers.*", "logging.*"]


def trusted_targets() -> list[str]:
    """sweeplab.train's whitelist: ours plus the user's, from SWEEPLAB_TRUSTED_TARGETS=my_pkg.*,a.fn.
    Read once, when the app starts, so no config (hydra.job.env_set included) can widen it."""
    extra = [p.strip() for p in os.environ.get(TRUST_ENV, "").split(",") if p.strip()]
    try:
        execution_whitelist(extra)  # Hydra's own pattern rules: an exact name or a trailing .*
    except InstantiationException as exc:
        raise ConfigError(f"{TRUST_ENV}={os.environ[TRUST_ENV]}: {oneline(exc)}") from None
    return BASE_TRUSTED + extra


def oneline(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines()]
    # Hydra's last lines point at a web page or repeat the key Hydra was given.
    lines = [ln for ln in lines if ln and not ln.startswith(("See https://", "full_key:"))]
    return " ".join(lines) or type(exc).__name__


def refusal(key: str, target: Any, exc: BaseException) -> str:
    """One line naming the key; for a target that is merely not whitelisted, how to trust it."""
    message = f"{key}={target}: {oneline(exc)}"
    if "not in the Hydra execution whitelist" in message:
        message += (
            f" To trust it: sweeplab.train reads {TRUST_ENV}=my_pkg.* (or the exact name) from the "
            "environment; another app names it in @hydra.main(execution_whitelist=[...])."
        )
    return message


def resolve_target(key: str, target: str, allow: tuple[str, ...] | None = None) -> functools.partial:
    """The callable a config names, not yet called, resolved as Hydra's instantiate() resolves it:
    under the app's whitelist (plus `allow`, the targets the caller's code trusts for this key), or
    outside one, Hydra's blacklist. ConfigError names the key."""
    try:
        return instantiate({"_target_": target, "_partial_": True}, _execution_whitelist_=allow)
    except InstantiationException as exc:
        raise ConfigError(refusal(key, target, exc)) from None
