"""What a chat with a trained model starts from: its data's system prompt and tools, or a tools file."""

from __future__ import annotations

import json
from pathlib import Path

from sweeplab.config import DataConfig
from sweeplab.data.readers import TOOL_FORMAT, check_tools, describe, read_jsonl
from sweeplab.data.toolcalls import generate_chats
from sweeplab.errors import DataError


def data_prompt(cfg: DataConfig) -> tuple[str | None, list[dict] | None]:
    """(system prompt, tool schemas) as the run's training chats had them.

    The system prompt is the first train chat's; the tools are every schema the chats carry, by name,
    first one kept, so the model sees the prompt it learned. Plain text data has neither."""
    if cfg.source == "toolcalls":
        chats = generate_chats(1, cfg.seed)  # the data's first train chat, as the run generated it
    elif cfg.source == "jsonl":
        chats = read_jsonl(cfg.path)
    else:
        return None, None
    first = chats[0]["messages"]
    system = first[0]["content"] if first and first[0]["role"] == "system" else None
    tools: dict[str, dict] = {}
    for chat in chats:
        for tool in chat.get("tools") or []:
            tools.setdefault(tool["function"]["name"], tool)
    return system, list(tools.values()) or None


def read_tools_file(path: str | Path) -> list[dict]:
    """A JSON list of tool schemas (OpenAI / Hugging Face form, or the flat {"name", ...} form)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--tools {path}: no such file; expected a JSON list of objects like {TOOL_FORMAT}")
    try:
        tools = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"--tools {path}: not valid JSON ({exc}); expected a list of {TOOL_FORMAT}") from None
    if not isinstance(tools, list) or not tools:
        got = "an empty list" if tools == [] else describe(tools)
        raise DataError(f"--tools {path}: {got}; expected a JSON list of objects like {TOOL_FORMAT}")
    return check_tools(tools, f"--tools {path}")
