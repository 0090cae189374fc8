"""Keep secrets out of everything sweeplab writes: logged configs, log lines, output files.

Three kinds are masked: values under secret-looking keys (`*_token`, `*_key`, `password`, ...),
passwords inside URLs (`postgresql://user:PASSWORD@host/db`), and the values of secret-looking
environment variables (WANDB_API_KEY, HF_TOKEN, ...) wherever they appear in a string.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

MASK = "***"
_SECRET_NAME = r"[A-Za-z0-9_.]*(?:token|key|secret|password|passwd)"
SECRET_KEY = re.compile(rf"^{_SECRET_NAME}$", re.IGNORECASE)
# Tokenizer special tokens are names of strings, not credentials.
_NOT_SECRET = re.compile(r"(^|[._])(pad|eos|bos|unk|sep|cls|mask)_token$", re.IGNORECASE)
# key=value or key: value on a command line or in a log line
_SECRET_ASSIGNMENT = re.compile(rf"(\b{_SECRET_NAME}\s*[=:]\s*)(['\"]?)[^\s'\",}}\]]+\2", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_MIN_SECRET_LEN = 6  # shorter env values ("1", "true") would mask ordinary text


def _env_secrets() -> list[str]:
    values = [v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= _MIN_SECRET_LEN]
    return sorted(set(values), key=len, reverse=True)  # longest first: no partial masks


def redact_text(text: str) -> str:
    for value in _env_secrets():
        text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    return _SECRET_ASSIGNMENT.sub(_mask_assignment, text)


def is_secret_key(name: str) -> bool:
    return bool(SECRET_KEY.match(name)) and not _NOT_SECRET.search(name)


def _mask_assignment(match: re.Match) -> str:
    key = match.group(1).rstrip("=: \t")
    return (
        match.group(0)
        if not is_secret_key(key)
        else f"{match.group(1)}{match.group(2)}{MASK}{match.group(2)}"
    )


def redact(obj: Any) -> Any:
    """A copy of a config-like structure with secret values masked."""
    if isinstance(obj, dict):
        return {
            k: MASK if is_secret_key(str(k)) and v not in (None, "") else redact(v) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def redact_file(path: Path) -> None:
    """Rewrite a text file that may hold secrets (Hydra's .hydra/*.yaml, multirun.yaml) in place."""
    from sweeplab.outputs import atomic_write_text

    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return
    clean = redact_text(text)
    if clean != text:
        atomic_write_text(path, clean)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction() -> None:
    """On every handler in place now; Hydra replaces handlers per job, so callers repeat this."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
