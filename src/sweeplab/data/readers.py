"""Read user data files, failing on the first bad line with file:line and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

from sweeplab.errors import DataError

ROLES = ("system", "user", "assistant")
FORMAT = 'one {"messages": [{"role": ..., "content": ...}, ...]} object per line'


def read_file(path: str | Path, expected: str) -> tuple[Path, str]:
    """Missing, empty and non-UTF-8 files are reported the same way for both formats."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (set data.path / data.val_path to an existing file)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a leading BOM (Windows editors) is fine
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {exc.start}); save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty; expected {expected}")
    return path, text


def read_text(path: str | Path) -> str:
    """Plain text for causal-LM fine-tuning; every token becomes a label."""
    return read_file(path, "UTF-8 text")[1]


def check_chat(obj: object, where: str) -> dict:
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise DataError(f"{where}: expected {FORMAT}")
    for k, message in enumerate(obj["messages"]):
        if not isinstance(message, dict):
            raise DataError(f"{where}: messages[{k}] is not an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            got = "missing" if role is None else repr(role)
            raise DataError(f"{where}: messages[{k}] role is {got}; allowed roles: {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{k}] content must be a string")
    if not any(m["role"] == "assistant" for m in obj["messages"]):
        raise DataError(f"{where}: chat has no assistant turn, so nothing to learn (add one)")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]}


def read_jsonl(path: str | Path) -> list[dict]:
    """Chats as messages JSONL (blank lines skipped); extra keys per message are dropped."""
    path, text = read_file(path, FORMAT)
    chats = []
    # split("\n"), not splitlines(): a JSON string may hold a raw U+2028, which splitlines() breaks on.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"malformed JSON ({exc.msg}, column {exc.colno})"
            raise DataError(f"{where}: {problem}; expected {FORMAT}") from None
        chats.append(check_chat(obj, where))
    return chats
