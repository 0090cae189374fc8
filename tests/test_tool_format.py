"""Tool-calling chats in the OpenAI / Hugging Face format: read, rendered per template, labelled, prompted."""

import copy
import json
import re

import pytest

from sweeplab.config import DataConfig
from sweeplab.data import IGNORE, build_datasets, generate_chats, prompt_ids, read_jsonl, tokenize_chat
from sweeplab.data.chatml import CHAT_TEMPLATE, IM_END
from sweeplab.data.tokenize import render_inputs
from sweeplab.errors import DataError
from sweeplab.models.embedded import build_tokenizer
from tests.test_data import labelled_runs

DELETE_NODE = {
    "type": "function",
    "function": {
        "name": "delete_node",
        "description": "Delete a node of the model.",
        "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
    },
}
GET_NODE = {"name": "get_node", "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}}}
# As OpenAI writes it: arguments as a JSON string, null content beside the call, the flat tool form.
RAW = {
    "tools": [DELETE_NODE, GET_NODE],
    "messages": [
        {"role": "system", "content": "You operate a structural analysis API."},
        {"role": "user", "content": "Delete node 7."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "delete_node", "arguments": '{"id": 7}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"deleted": true}'},
        {"role": "assistant", "content": "Node 7 is deleted."},
    ],
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "delete_node", "arguments": {"id": 7}}}
CHAT = {
    "messages": [
        RAW["messages"][0],
        RAW["messages"][1],
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        RAW["messages"][3],
        RAW["messages"][4],
    ],
    "tools": [DELETE_NODE, {"type": "function", "function": GET_NODE}],
}
CALL_BLOCK = '<tool_call>\n{"name": "delete_node", "arguments": {"id": 7}}\n</tool_call>'

# Like Qwen2.5's: tools in the system turn, calls rendered from message.tool_calls, no generation tags.
QWEN_TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}"
    "{{- '# Tools\n\n<tools>' }}{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\n</tools><|im_end|>\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    '{{- \'\n<tool_call>\n{"name": "\' + call.function.name + \'", "arguments": \' }}'
    "{{- call.function.arguments | tojson }}{{- '}\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\n<tool_response>\n' + message.content + '\n</tool_response><|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
PLAIN_TEMPLATE = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    """The embedded tokenizer (512 tokens, ~0.1 s to train) under three templates."""
    corpus = "\n".join(m["content"] for chat in generate_chats(200, 0) for m in chat["messages"])
    chatml = build_tokenizer(corpus, vocab_size=512)
    out = {"chatml": chatml}
    for name, template in (("chatml-no-tags", PLAIN_TEMPLATE), ("qwen-tools", QWEN_TOOLS_TEMPLATE)):
        out[name] = copy.deepcopy(chatml)
        out[name].chat_template = template
    return out


def write_jsonl(path, *objs):
    path.write_text("".join(json.dumps(obj) + "\n" for obj in objs), encoding="utf-8")
    return path


# --- reading -------------------------------------------------------------------------------------


def test_tool_format_is_read_and_normalized(tmp_path):
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    no_content = copy.deepcopy(RAW)
    del no_content["messages"][2]["content"]  # absent reads like null
    no_content["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"id": 7}
    del no_content["messages"][2]["tool_calls"][0]["type"]
    chats = read_jsonl(write_jsonl(tmp_path / "tools.jsonl", RAW, plain, no_content))
    assert chats == [CHAT, plain, CHAT]  # no "tools" key where the line had none


# --- rendering and labels ------------------------------------------------------------------------


def test_template_with_tool_support_renders_tools_and_calls(tokenizers):
    tok = tokenizers["qwen-tools"]
    ids, labels, truncated = tokenize_chat(tok, CHAT["messages"], 1000, tools=CHAT["tools"])
    text = tok.decode(ids)
    assert not truncated and text == tok.apply_chat_template(
        CHAT["messages"], tools=CHAT["tools"], tokenize=False
    )
    assert "# Tools" in text and "You may call" not in text  # the template's own words, not sweeplab's
    for tool in CHAT["tools"]:
        assert json.dumps(tool) in text
    assert labelled_runs(tok, labels) == [CALL_BLOCK + IM_END, "Node 7 is deleted." + IM_END]


@pytest.mark.parametrize("name", ["chatml", "chatml-no-tags"])  # generation-tag mask, then prefix renders
def test_template_without_tool_support_gets_hermes_text(tokenizers, name):
    tok = tokenizers[name]
    ids, labels, _ = tokenize_chat(tok, CHAT["messages"], 1000, tools=CHAT["tools"])
    text = tok.decode(ids)
    system = text[: text.index(IM_END)]
    schemas = "\n".join(json.dumps(tool) for tool in CHAT["tools"])
    assert system.startswith("<|im_start|>system\nYou operate a structural analysis API.\n\n")
    assert system.endswith(f"<tools>\n{schemas}\n</tools>")
    assert f"<|im_start|>assistant\n{CALL_BLOCK}{IM_END}" in text
    assert '<|im_start|>user\n<tool_response>\n{"deleted": true}\n</tool_response><|im_end|>' in text
    assert "<|im_start|>tool" not in text
    assert labelled_runs(tok, labels) == [CALL_BLOCK + IM_END, "Node 7 is deleted." + IM_END]


def test_hermes_text_inserts_a_system_turn_and_keeps_call_text(tokenizers):
    messages = [
        {"role": "user", "content": "Delete node 7 and 8."},
        {"role": "assistant", "content": "Two calls.", "tool_calls": [CALL, CALL]},
    ]
    rendered, kwargs = render_inputs(tokenizers["chatml"], messages, [DELETE_NODE])
    assert kwargs == {} and [m["role"] for m in rendered] == ["system", "user", "assistant"]
    assert rendered[0]["content"].endswith(f"<tools>\n{json.dumps(DELETE_NODE)}\n</tools>")
    assert rendered[2]["content"] == f"Two calls.\n{CALL_BLOCK}\n{CALL_BLOCK}"
    # With tool support the messages pass untouched and the schemas go to the template.
    assert render_inputs(tokenizers["qwen-tools"], messages, [DELETE_NODE]) == (
        messages,
        {"tools": [DELETE_NODE]},
    )
    # Chats without tools are rendered as before.
    assert render_inputs(tokenizers["chatml"], messages[:1], None) == (messages[:1], {})


@pytest.mark.parametrize("name", ["chatml", "chatml-no-tags", "qwen-tools"])
def test_prompt_is_the_training_text_up_to_each_answer(tokenizers, name):
    tok = tokenizers[name]
    ids, labels, _ = tokenize_chat(tok, CHAT["messages"], 1000, tools=CHAT["tools"])
    starts = [i for i in range(len(labels)) if labels[i] != IGNORE and (i == 0 or labels[i - 1] == IGNORE)]
    answers = [k for k, m in enumerate(CHAT["messages"]) if m["role"] == "assistant"]
    assert len(starts) == len(answers) == 2
    for k, start in zip(answers, starts, strict=True):
        prompt = prompt_ids(tok, CHAT["messages"][:k], tools=CHAT["tools"])
        assert prompt == ids[: len(prompt)] and len(prompt) == start  # the answer is what comes next


def test_jsonl_tools_reach_the_tokenized_examples(tokenizers, tmp_path):
    path = write_jsonl(tmp_path / "tools.jsonl", RAW, RAW)
    cfg = DataConfig(source="jsonl", path=str(path), max_seq_len=512)  # one chat each for train and val
    train, _, _ = build_datasets(cfg, tokenizers["chatml"], tmp_path)
    assert "<tools>" in tokenizers["chatml"].decode(train[0]["input_ids"])


# --- malformed tool data ------------------------------------------------------------------------


def chat_line(*messages: dict, **extra) -> str:
    return json.dumps({"messages": list(messages), **extra})


USER = {"role": "user", "content": "Delete node 7."}
ANSWER = {"role": "assistant", "content": "done"}


def calling(*calls) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def call(**function) -> dict:
    return {"type": "function", "function": function}


BAD = [
    (
        chat_line(USER, {"role": "assistant", "tool_calls": {"function": {}}}),
        "messages[1].tool_calls",
        "a list",
    ),
    (chat_line(USER, calling("delete_node")), "messages[1].tool_calls[0]", '{"type": "function"'),
    (chat_line(USER, calling({"name": "delete_node"})), "messages[1].tool_calls[0]", '"function": {"name"'),
    (chat_line(USER, calling(call(arguments={}))), "messages[1].tool_calls[0].function.name", "missing"),
    (chat_line(USER, calling(call(name="", arguments={}))), "tool_calls[0].function.name", "empty"),
    (chat_line(USER, calling(call(name="f", arguments="{id: 7}"))), "function.arguments", "not valid JSON"),
    (
        chat_line(USER, calling(call(name="f", arguments="[7]"))),
        "function.arguments",
        "a list; expected an object",
    ),
    (chat_line(USER, calling(call(name="f", arguments=7))), "function.arguments", "7; expected an object"),
    (chat_line(USER, calling(call(name="f"))), "function.arguments", "missing; expected an object"),
    (
        chat_line(USER, calling({"type": "retrieval", "function": {"name": "f", "arguments": {}}})),
        "messages[1].tool_calls[0].type",
        "only 'function'",
    ),
    (
        chat_line(USER, calling({"id": 1, "function": {"name": "f", "arguments": {}}})),
        "messages[1].tool_calls[0].id",
        "expected a string",
    ),
    (chat_line({**USER, "tool_calls": []}, ANSWER), "messages[0].tool_calls", "only assistant messages"),
    (
        chat_line(USER, {"role": "assistant", "content": None}),
        "messages[1] content",
        "null when the message has",
    ),
    (chat_line(USER, ANSWER, {"role": "tool", "content": None}), "messages[2] content", "must be a string"),
    (
        chat_line(USER, ANSWER, {"role": "tool", "content": "ok", "tool_call_id": 5}),
        "tool_call_id",
        "a string",
    ),
    (chat_line(USER, ANSWER, tools={"name": "f"}), "tools", "a dict; expected a list of objects"),
    (chat_line(USER, ANSWER, tools=["f"]), "tools[0]", "expected an object"),
    (
        chat_line(USER, ANSWER, tools=[{"type": "function", "function": {}}]),
        "tools[0].function.name",
        "missing",
    ),
    (chat_line(USER, ANSWER, tools=[{"description": "no name"}]), "tools[0].name", "missing"),
    (chat_line(USER, ANSWER, tools=[{"type": "function"}]), "tools[0].name", '"function": {"name"'),
    (chat_line(USER, ANSWER, tools=[{"type": "code_interpreter"}]), "tools[0].type", "only 'function'"),
    (
        chat_line(USER, ANSWER, tools=[{"type": "function", "function": "f"}]),
        "tools[0].function",
        "an object",
    ),
    (chat_line(USER, ANSWER, tools=[{"name": "f", "parameters": []}]), "tools[0].parameters", "JSON schema"),
    (chat_line(USER, {"role": "tool", "content": "ok"}), "chat has no assistant turn", "add one"),
]


@pytest.mark.parametrize(
    ("line", "field", "allowed"), BAD, ids=[f"{i}-{case[1]}" for i, case in enumerate(BAD)]
)
def test_bad_tool_data_names_file_line_and_field(tmp_path, line, field, allowed):
    path = write_jsonl(tmp_path / "tools.jsonl", RAW)
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match=re.escape("tools.jsonl:2: ") + ".*" + re.escape(field)) as info:
        read_jsonl(path)
    assert allowed in str(info.value)


def test_long_tool_chats_train_at_the_default_length(tmp_path):
    """A user's chats longer than the old default (256 tokens: two tool schemas rendered in the system
    turn) train as they are through the real entry point: data.max_seq_len unset follows the data."""
    from tests.conftest import run_train

    turns = [RAW["messages"][0]]
    for k in range(1):
        turns += [
            {"role": "user", "content": f"Delete node {k}."},
            calling(call(name="delete_node", arguments={"id": k})),
        ]
    row = {"tools": RAW["tools"], "messages": turns}
    path = write_jsonl(tmp_path / "long.jsonl", *[row] * 12)
    tok_len = len(tokenize_chat(build_tokenizer_for_tiny(), turns, None, RAW["tools"])[0])
    assert 256 < tok_len <= 512  # longer than the old default, within model=tiny's context
    result = run_train(
        "model=tiny",
        "data=jsonl",
        f"data.path={path}",
        "logger=csv",
        "trainer.max_steps=2",
        "data.batch_size=2",
        "eval.n_generate=0",
        "run_name=long",
        output_root=tmp_path / "out",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "truncated to max_seq_len=512: 0 train, 0 val" in result.stdout + result.stderr


def build_tokenizer_for_tiny():
    """model=tiny's tokenizer as its recipe builds it (the embedded base's own, before pretraining)."""
    from sweeplab.config import validate
    from sweeplab.models.embedded import corpus_text
    from tests.conftest import make_cfg

    recipe = validate(make_cfg("model=tiny")).model.embedded
    return build_tokenizer(corpus_text(recipe.corpus_chars), recipe.vocab_size)
