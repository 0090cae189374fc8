"""Read one tool call from generated text and score it against the reference, by BFCL's AST-checker rules.

The rules (docs/EVALUATION.md, "How a tool call is scored") are implemented here, not imported from
bfcl-eval: that package pins old versions of heavy libraries that would clash with the training stack.
BFCL checks against a function schema; we have only the reference call, so the reference's values
give the expected types and every reference key is required.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

METRIC_NAMES = ("json_valid", "tool_name_acc", "args_acc", "tool_exact")
_VERDICT_FIELDS = dict(zip(METRIC_NAMES, ("json_valid", "tool_name", "args", "exact"), strict=True))

# BFCL's standardize_string: these characters go, then lowercase, so "C25/30" == "c25 30".
_IGNORED_CHARS = re.compile(r"[ ,./\-_*^]")
# Hermes/Qwen tags; the closing tag may be cut off by the generation limit.
_TAG_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_DECODER = json.JSONDecoder()
_REL_TOL = 1e-9  # numbers: 0.1 + 0.2 matches 0.3; 1.35 does not match 1.3501
_SHOW_CHARS = 80  # values quoted in verdict messages are cut to this length


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Parsed:
    call: ToolCall | None  # the first call read; None when no call could be read
    clean: bool  # exactly one call, bare JSON or in <tool_call> tags, with only whitespace around it
    fmt: str  # where the call came from: "json" | "tagged" | "embedded" (in other text) | "none" (no call)
    error: str | None  # why there is no call, or why the output is not clean; None when clean


@dataclass(frozen=True)
class Verdict:
    json_valid: bool  # one tool call could be parsed
    tool_name: bool  # right endpoint
    args: bool  # right arguments (compared even when the name is wrong)
    exact: bool  # json_valid and tool_name and args and parsed.clean
    fields: dict[str, str]  # argument key -> "ok" | "missing" | "unexpected" | "wrong: .." | "wrong type: .."

    def to_dict(self) -> dict:
        return asdict(self)


class _NotACall(ValueError):
    """A JSON value with no readable call in it; the message says why."""


# --- parsing -------------------------------------------------------------------------------------


def _one_call(obj: Any) -> ToolCall:
    """{"name", "arguments"|"parameters"} or OpenAI's {"type": "function", "function": {...}}."""
    if not isinstance(obj, dict):
        raise _NotACall(f"expected a JSON object for the call, got {_kind(obj)}")
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str):
        raise _NotACall('the JSON object has no "name" string, so it is not a tool call')
    key = "arguments" if "arguments" in obj else "parameters"
    args = obj.get(key, {})  # neither key: a call without arguments
    if isinstance(args, str):  # OpenAI sends arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            raise _NotACall(f'"{key}" is a string that is not valid JSON ({e})') from None
    if not isinstance(args, dict):
        raise _NotACall(f'"{key}" must be a JSON object, got {_kind(args)}')
    return ToolCall(name, args)


def _read(value: Any) -> tuple[ToolCall, int]:
    """The first call in one decoded JSON value, and how many calls it holds."""
    items = value.get("tool_calls") if isinstance(value, dict) and "tool_calls" in value else value
    if not isinstance(items, list):
        return _one_call(items), 1
    if not items:
        raise _NotACall("an empty list of tool calls")
    return _one_call(items[0]), len(items)


def _objects(text: str) -> Iterator[Any]:
    """Each JSON object inside free text, left to right (an object's inner objects are not repeated)."""
    start = text.find("{")
    while start != -1:
        try:
            value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        yield value
        start = text.find("{", end)


class _Piece(NamedTuple):
    call: ToolCall | None
    count: int  # calls found
    bare: bool  # the piece is one JSON value and nothing else
    error: str | None


def _read_piece(text: str) -> _Piece:
    try:
        values, bare = [json.loads(text)], True  # json.loads allows whitespace around
    except json.JSONDecodeError as e:
        values, bare = list(_objects(text)), False
        if not values:
            return _Piece(None, 0, False, f"invalid JSON ({e})" if "{" in text else "no JSON object found")
    first, count, errors = None, 0, []
    for value in values:
        try:
            call, n = _read(value)
        except _NotACall as e:
            errors.append(str(e))
            continue
        first = call if first is None else first
        count += n
    return _Piece(first, count, bare, errors[0] if errors else None)


def parse_tool_call(text: str) -> Parsed:
    """Bare JSON, <tool_call> tags, or the first JSON call inside other text (which is never clean)."""
    if "<tool_call>" in text:
        pieces = [_read_piece(m.group(1)) for m in _TAG_BLOCK.finditer(text)]
        fmt, around = "tagged", bool(_TAG_BLOCK.sub("", text).strip())
    else:
        pieces = [_read_piece(text)]
        fmt, around = ("json" if pieces[0].bare else "embedded"), not pieces[0].bare
    call = next((p.call for p in pieces if p.call is not None), None)
    if call is None:
        return Parsed(None, False, "none", next(p.error for p in pieces if p.error))
    count = sum(p.count for p in pieces)
    if count > 1:
        error = f"{count} tool calls; only the first was scored"
    elif around:
        error = "text around the tool call"
    elif not all(p.bare for p in pieces):
        error = "text around the JSON inside <tool_call>"
    else:
        return Parsed(call, True, fmt, None)
    return Parsed(call, False, fmt, error)


def call_from_message(message: dict) -> ToolCall | None:
    """The reference call in a chat's final assistant message; None when that message is not a tool call."""
    if message.get("tool_calls"):
        try:
            return _read(message["tool_calls"])[0]
        except _NotACall as e:
            raise ValueError(f"the reference message's tool_calls cannot be read: {e}") from None
    content = message.get("content")
    if not isinstance(content, str):
        return None
    parsed = parse_tool_call(content)
    return parsed.call if parsed.clean else None


# --- comparing -----------------------------------------------------------------------------------


def normalize_string(value: str) -> str:
    """BFCL's rule: lowercase, drop spaces and , . / - _ * ^ ("C25/30" -> "c2530"), and ' becomes "."""
    return _IGNORED_CHARS.sub("", value).lower().replace("'", '"')


def _kind(value: Any) -> str:
    """JSON's type names; bool is checked before int because True is an int in Python."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


def _same_scalar(got: Any, expected: Any) -> bool:
    """Both of the same _kind, and not an array or object."""
    if isinstance(expected, str):
        return normalize_string(got) == normalize_string(expected)
    if isinstance(expected, bool) or expected is None:
        return got == expected
    if isinstance(got, int) and isinstance(expected, int):
        return got == expected  # exact: floats would round large ids
    try:
        return math.isclose(got, expected, rel_tol=_REL_TOL)
    except OverflowError:  # an int beyond float range
        return False


def _diff(got: Any, expected: Any, path: str = "") -> list[str]:
    """What differs, one line per place ('["2"] missing', '[1] got 2, expected 3'); empty when equal."""
    at = f"{path} " if path else ""
    got_kind, want_kind = _kind(got), _kind(expected)
    if got_kind != want_kind:
        return [f"{at}got {got_kind} {_show(got)}, expected {want_kind} {_show(expected)}"]
    if want_kind == "object":
        lines = []
        for key in [*expected, *(k for k in got if k not in expected)]:
            where = f"{path}[{_show(key)}]"
            if key not in got:
                lines.append(f"{where} missing")
            elif key not in expected:
                lines.append(f"{where} unexpected")
            else:
                lines += _diff(got[key], expected[key], where)
        return lines
    if want_kind == "array":  # order matters, as in BFCL
        if len(got) != len(expected):
            return [f"{at}got {len(got)} items {_show(got)}, expected {len(expected)} {_show(expected)}"]
        pairs = enumerate(zip(got, expected, strict=True))
        return [line for i, (g, e) in pairs for line in _diff(g, e, f"{path}[{i}]")]
    return [] if _same_scalar(got, expected) else [f"{at}got {_show(got)}, expected {_show(expected)}"]


def values_match(got: Any, expected: Any) -> bool:
    return not _diff(got, expected)


def compare_arguments(got: dict[str, Any], expected: dict[str, Any]) -> dict[str, str]:
    """Argument key -> "ok" | "missing" | "unexpected" | "wrong: ..." | "wrong type: ..."."""
    fields = {}
    for key, want in expected.items():
        if key not in got:
            fields[key] = "missing"  # also when the reference value is null
            continue
        lines = _diff(got[key], want)
        if not lines:
            fields[key] = "ok"
        elif _kind(got[key]) != _kind(want):
            fields[key] = f"wrong type: {lines[0]}"
        else:
            fields[key] = "wrong: " + "; ".join(lines)
    fields.update({key: "unexpected" for key in got if key not in expected})
    return fields


def score(expected: ToolCall, output: str) -> tuple[Parsed, Verdict]:
    """Names match exactly after stripping surrounding whitespace: endpoints are identifiers."""
    parsed = parse_tool_call(output)
    if parsed.call is None:
        return parsed, Verdict(json_valid=False, tool_name=False, args=False, exact=False, fields={})
    fields = compare_arguments(parsed.call.arguments, expected.arguments)
    name_ok = parsed.call.name.strip() == expected.name.strip()
    args_ok = all(status == "ok" for status in fields.values())
    exact = name_ok and args_ok and parsed.clean
    return parsed, Verdict(json_valid=True, tool_name=name_ok, args=args_ok, exact=exact, fields=fields)


def aggregate(verdicts: list[Verdict]) -> dict[str, float]:
    """Fractions in [0, 1] under METRIC_NAMES."""
    if not verdicts:
        raise ValueError("aggregate needs at least one verdict, got an empty list")
    return {
        metric: sum(getattr(v, field) for v in verdicts) / len(verdicts)
        for metric, field in _VERDICT_FIELDS.items()
    }
