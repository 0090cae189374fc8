"""Read user data files, failing on the first bad line with file:line and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

from sweeplab.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
FORMAT = 'one {"messages": [{"role": ..., "content": ...}, ...]} object per line'
# OpenAI / Hugging Face chat convention for tool use; errors quote it so the fix is one look away.
CALL_FORMAT = '{"type": "function", "function": {"name": "...", "arguments": {...}}}'
TOOL_FORMAT = '{"type": "function", "function": {"name": "...", "description": "...", "parameters": {...}}}'


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
    messages = [check_message(m, f"{where}: messages[{k}]") for k, m in enumerate(obj["messages"])]
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: chat has no assistant turn, so nothing to learn (add one)")
    chat = {"messages": messages}
    if obj.get("tools") is not None:
        chat["tools"] = check_tools(obj["tools"], where)
    return chat


def check_message(message: object, where: str) -> dict:
    """{"role", "content"}, plus tool_calls on an assistant turn and tool_call_id / name on a tool result."""
    if not isinstance(message, dict):
        raise DataError(f"{where} is not an object with role and content")
    role = message.get("role")
    if role not in ROLES:
        got = "missing" if role is None else repr(role)
        raise DataError(f"{where} role is {got}; allowed roles: {', '.join(ROLES)}")
    calls = message.get("tool_calls")
    if calls is not None and role != "assistant":
        raise DataError(f"{where}.tool_calls: on a {role!r} message; only assistant messages make tool calls")
    content = message.get("content")
    if calls and content is None:  # OpenAI writes null (or no) content next to tool calls
        content = ""
    if not isinstance(content, str):
        with_calls = " (or null when the message has tool_calls)" if role == "assistant" else ""
        raise DataError(f"{where} content must be a string{with_calls}")
    out = {"role": role, "content": content}
    if calls is not None:
        if not isinstance(calls, list):
            raise DataError(f"{where}.tool_calls: {describe(calls)}; expected a list of {CALL_FORMAT}")
        if calls:  # [] means no call, as an absent key does
            out["tool_calls"] = [check_call(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if message.get(key) is not None:
                if not isinstance(message[key], str):
                    raise DataError(f"{where}.{key}: {describe(message[key])}; expected a string")
                out[key] = message[key]
    return out


def check_call(call: object, where: str) -> dict:
    """Arguments always come out as a dict: chat templates render them with tojson."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise DataError(f"{where}: expected {CALL_FORMAT}")
    if call.get("type", "function") != "function":
        raise DataError(f"{where}.type: {call['type']!r}; only 'function' is allowed")
    function = call["function"]
    name = function.get("name")
    if not isinstance(name, str) or not name:
        problem = f"{where}.function.name: {describe(name)}"
        raise DataError(f"{problem}; expected a non-empty string, as in {CALL_FORMAT}")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{where}.function.arguments: not valid JSON ({exc.msg}, column {exc.colno}); "
                "expected an object, or a string holding a JSON object"
            ) from None
    if not isinstance(arguments, dict):
        raise DataError(
            f"{where}.function.arguments: {describe(arguments)}; "
            "expected an object ({} for none), or a string holding a JSON object"
        )
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call.get("id") is not None:
        if not isinstance(call["id"], str):
            raise DataError(f"{where}.id: {describe(call['id'])}; expected a string")
        out["id"] = call["id"]
    return out


def check_tools(tools: object, where: str) -> list[dict]:
    """Each tool as {"type": "function", "function": {...}}; the flat {"name", ...} form is wrapped."""
    if not isinstance(tools, list):
        raise DataError(f"{where}: tools: {describe(tools)}; expected a list of objects like {TOOL_FORMAT}")
    out = []
    for i, tool in enumerate(tools):
        at = f"{where}: tools[{i}]"
        if not isinstance(tool, dict):
            raise DataError(f"{at}: {describe(tool)}; expected an object like {TOOL_FORMAT}")
        if tool.get("type", "function") != "function":
            raise DataError(f"{at}.type: {tool['type']!r}; only 'function' is allowed")
        if "function" in tool:
            function, at = tool["function"], f"{at}.function"
            if not isinstance(function, dict):
                raise DataError(f"{at}: {describe(function)}; expected an object like {TOOL_FORMAT}")
        else:  # flat: {"name", "description", "parameters"}, with or without "type"
            function = {key: value for key, value in tool.items() if key != "type"}
        if not isinstance(function.get("name"), str) or not function["name"]:
            problem = f"{at}.name: {describe(function.get('name'))}"
            raise DataError(f"{problem}; expected a non-empty string, as in {TOOL_FORMAT}")
        if not isinstance(function.get("description", ""), str):
            raise DataError(f"{at}.description: {describe(function['description'])}; expected a string")
        if not isinstance(function.get("parameters", {}), dict):
            problem = f"{at}.parameters: {describe(function['parameters'])}"
            raise DataError(f"{problem}; expected a JSON schema object")
        out.append({"type": "function", "function": dict(function)})
    return out


def describe(value: object) -> str:
    """What was found, short enough for one error line."""
    if value is None:
        return "missing"
    if isinstance(value, str) and not value:
        return "empty"
    return f"a {type(value).__name__}" if isinstance(value, (dict, list)) else repr(value)[:40]


def read_jsonl(path: str | Path) -> list[dict]:
    """Chats as messages JSONL (blank lines skipped); keys outside the chat format are dropped."""
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
