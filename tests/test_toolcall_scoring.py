"""Tool-call scoring: each BFCL-style rule on a small case, and the default data scored against itself."""

import json
import subprocess
import sys

import pytest

from sweeplab.data.toolcalls import generate_chats
from sweeplab.eval.toolcall import (
    METRIC_NAMES,
    ToolCall,
    aggregate,
    call_from_message,
    normalize_string,
    parse_tool_call,
    score,
    values_match,
)

BEAM = ToolCall("POST /db/beam", {"id": 12, "node_i": 3, "node_j": 4, "section": 2, "material": 1})


def out(name: str = BEAM.name, **changes) -> str:
    """The reference beam call as the model would write it, with some arguments changed."""
    return json.dumps({"name": name, "arguments": {**BEAM.arguments, **changes}})


def test_right_call_is_exact():
    parsed, verdict = score(BEAM, out())
    assert (parsed.fmt, parsed.clean, parsed.error) == ("json", True, None)
    assert verdict.json_valid and verdict.tool_name and verdict.args and verdict.exact
    assert set(verdict.fields.values()) == {"ok"}


def test_wrong_name_still_compares_arguments():
    _, verdict = score(BEAM, out("POST /db/column"))
    assert verdict.json_valid and not verdict.tool_name and verdict.args and not verdict.exact


def test_name_is_exact_after_stripping_whitespace():
    assert score(BEAM, out(" POST /db/beam "))[1].tool_name
    assert not score(BEAM, out("post /db/beam"))[1].tool_name


def test_wrong_argument_value():
    _, verdict = score(BEAM, out(node_j=5))
    assert verdict.tool_name and not verdict.args and not verdict.exact
    assert verdict.fields["node_j"] == "wrong: got 5, expected 4"
    assert verdict.fields["id"] == "ok"


def test_extra_argument():
    _, verdict = score(BEAM, out(length=6.0))
    assert not verdict.args and verdict.fields["length"] == "unexpected"


def test_missing_argument():
    call = json.loads(out())
    del call["arguments"]["material"]
    _, verdict = score(BEAM, json.dumps(call))
    assert not verdict.args and verdict.fields["material"] == "missing"


def test_null_expected_and_absent_is_missing():
    _, verdict = score(ToolCall("f", {"a": None}), '{"name": "f", "arguments": {}}')
    assert verdict.fields == {"a": "missing"}
    assert score(ToolCall("f", {"a": None}), '{"name": "f", "arguments": {"a": null}}')[1].exact


@pytest.mark.parametrize("text", [out()[:-2], "POST /db/beam id=12", "", '{"name": "POST /db/beam"'])
def test_invalid_json_reads_no_call(text):
    parsed, verdict = score(BEAM, text)
    assert parsed.call is None and parsed.fmt == "none" and parsed.error
    assert not (verdict.json_valid or verdict.tool_name or verdict.args or verdict.exact)
    assert verdict.fields == {}


def test_text_around_json_is_parsed_but_not_exact():
    parsed, verdict = score(BEAM, f"Sure, here is the call: {out()} Let me know!")
    assert (parsed.fmt, parsed.clean) == ("embedded", False)
    assert verdict.json_valid and verdict.tool_name and verdict.args and not verdict.exact


def test_code_fence_is_text_around():
    parsed, verdict = score(BEAM, f"```json\n{out()}\n```")
    assert (parsed.fmt, parsed.clean) == ("embedded", False) and verdict.args and not verdict.exact


@pytest.mark.parametrize(
    "text",
    [f"<tool_call>{out()}</tool_call>", f"\n<tool_call>\n{out()}\n</tool_call>\n", f"<tool_call>{out()}"],
)
def test_tags_are_exact(text):
    parsed, verdict = score(BEAM, text)
    assert (parsed.fmt, parsed.clean) == ("tagged", True) and verdict.exact


@pytest.mark.parametrize(
    "text",
    [f"I will add the beam. <tool_call>{out()}</tool_call>", f"<tool_call>{out()} done</tool_call>"],
)
def test_tags_with_text_around_are_not_exact(text):
    parsed, verdict = score(BEAM, text)
    assert (parsed.fmt, parsed.clean) == ("tagged", False) and parsed.error
    assert verdict.json_valid and verdict.args and not verdict.exact


def test_key_order_does_not_matter():
    reordered = {"arguments": dict(reversed(BEAM.arguments.items())), "name": BEAM.name}
    assert score(BEAM, json.dumps(reordered))[1].exact


def test_int_and_float_compare_by_value():
    assert values_match(3, 3.0) and values_match(3.0, 3) and values_match(0.1 + 0.2, 0.3)
    assert not values_match(1.3501, 1.35)
    assert not values_match(2**60 + 1, 2**60)  # ints exactly: floats would round them


def test_bool_is_not_a_number():
    assert not values_match(True, 1) and not values_match(1, True)
    _, verdict = score(ToolCall("f", {"a": 1}), '{"name": "f", "arguments": {"a": true}}')
    assert verdict.fields["a"] == "wrong type: got boolean true, expected number 1"


def test_numeric_string_is_a_type_mismatch():
    _, verdict = score(BEAM, out(id="12"))
    assert not verdict.args and verdict.fields["id"] == 'wrong type: got string "12", expected number 12'


def test_string_normalization():
    assert normalize_string("C25/30") == normalize_string("c25 30") == "c2530"
    assert normalize_string("Linear-Static_ *^.,") == "linearstatic"
    # BFCL standardizes quotes too: a single-quoted span matches the double-quoted one.
    assert normalize_string("Beam 'B1'") == normalize_string('beam "B1"') == 'beam"b1"'
    assert values_match("Beam 'B1'", 'beam "B1"') and not values_match("Beam 'B1'", "beam B1")
    assert values_match("C25/30", "c25 30") and values_match("linear static", "linear_static")
    mat = ToolCall("POST /db/material", {"id": 1, "type": "timber"})
    _, verdict = score(mat, '{"name": "POST /db/material", "arguments": {"id": 1, "type": "steel"}}')
    assert verdict.fields["type"] == 'wrong: got "steel", expected "timber"'


def test_nested_dicts_and_lists():
    combo = ToolCall("POST /db/combination", {"id": 2, "factors": {"1": 1.35, "3": 1.5}, "cases": [1, 3]})
    same = {"name": combo.name, "arguments": {"cases": [1, 3], "factors": {"3": 1.5, "1": 1.35}, "id": 2}}
    assert score(combo, json.dumps(same))[1].exact
    wrong = {"name": combo.name, "arguments": {"id": 2, "factors": {"1": 1.5, "4": 1.5}, "cases": [3, 1]}}
    _, verdict = score(combo, json.dumps(wrong))
    assert verdict.fields["factors"] == 'wrong: ["1"] got 1.5, expected 1.35; ["3"] missing; ["4"] unexpected'
    assert verdict.fields["cases"] == "wrong: [0] got 3, expected 1; [1] got 1, expected 3"  # order matters
    assert not values_match([1, 3, 4], [1, 3])


def test_openai_function_shape_with_string_arguments():
    text = json.dumps(
        {"type": "function", "function": {"name": BEAM.name, "arguments": json.dumps(BEAM.arguments)}}
    )
    parsed, verdict = score(BEAM, text)
    assert parsed.call == BEAM and verdict.exact


@pytest.mark.parametrize(
    "call",
    [
        {"name": BEAM.name, "parameters": BEAM.arguments},
        {"tool_calls": [{"type": "function", "function": {"name": BEAM.name, "arguments": BEAM.arguments}}]},
    ],
)
def test_other_call_shapes(call):
    assert parse_tool_call(json.dumps(call)).call == BEAM


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"node": 3, "type": "fixed"}', 'no "name"'),
        ('{"name": "f", "arguments": [1, 2]}', "must be a JSON object"),
        ('{"name": "f", "arguments": "{oops"}', "not valid JSON"),
    ],
)
def test_json_that_is_not_a_call(text, error):
    parsed = parse_tool_call(text)
    assert parsed.call is None and error in parsed.error


@pytest.mark.parametrize(
    "text",
    [
        f"<tool_call>{out()}</tool_call>\n<tool_call>{out(node_j=9)}</tool_call>",
        json.dumps({"tool_calls": [json.loads(out()), json.loads(out(node_j=9))]}),
        f"{out()}\n{out(node_j=9)}",
    ],
)
def test_two_calls_score_the_first_and_are_not_clean(text):
    parsed, verdict = score(BEAM, text)
    assert parsed.call == BEAM and not parsed.clean and "2 tool calls" in parsed.error
    assert verdict.args and not verdict.exact


def test_aggregate_fractions():
    verdicts = [score(BEAM, text)[1] for text in (out(), out(node_j=5), f"ok: {out()}", "no call")]
    assert aggregate(verdicts) == {
        "json_valid": 0.75,
        "tool_name_acc": 0.75,
        "args_acc": 0.5,
        "tool_exact": 0.25,
    }
    assert tuple(aggregate(verdicts)) == METRIC_NAMES
    with pytest.raises(ValueError, match="empty"):
        aggregate([])


def test_verdict_to_dict_is_json():
    _, verdict = score(BEAM, out(id="12"))
    assert json.loads(json.dumps(verdict.to_dict()))["fields"]["id"].startswith("wrong type")


def test_call_from_message():
    assert call_from_message({"role": "assistant", "content": out()}) == BEAM
    function = {"name": BEAM.name, "arguments": json.dumps(BEAM.arguments)}
    openai = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": function}],
    }
    assert call_from_message(openai) == BEAM
    flat = {"role": "assistant", "tool_calls": [{"name": BEAM.name, "arguments": BEAM.arguments}]}
    assert call_from_message(flat) == BEAM
    assert call_from_message({"role": "assistant", "content": "Node 3 is already fixed."}) is None
    assert call_from_message({"role": "assistant", "content": f"Here: {out()}"}) is None  # not clean
    with pytest.raises(ValueError, match="tool_calls"):
        call_from_message(
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}
        )


def test_default_data_scores_exact_against_itself():
    for chat in generate_chats(50, 0):
        final = chat["messages"][-1]
        assert final["role"] == "assistant"
        expected = call_from_message(final)
        parsed, verdict = score(expected, final["content"])
        assert verdict.exact, (final["content"], parsed, verdict)


def test_scoring_does_not_import_torch():
    code = "import sys, sweeplab.eval.toolcall; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
