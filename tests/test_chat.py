"""python -m sweeplab.chat on a real tiny run: one-shot answers, a scripted session, Ctrl-C, bad input."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sweeplab.data.readers import read_jsonl
from sweeplab.data.toolcalls import val_test_chats
from sweeplab.eval.conversation import describe_call
from sweeplab.eval.toolcall import parse_tool_call
from tests.conftest import ROOT, TINY, run_train

TOOLS = [{"name": "ping", "description": "Is a host up?", "parameters": {"type": "object", "properties": {}}}]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    # eval.batch_size=1: no left padding, so the scorer's answers are the ones chat decodes unpadded
    result = run_train(*TINY, "run_name=chat", "eval.batch_size=1", output_root=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "runs" / "chat"


def chat(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "sweeplab.chat", *map(str, args)],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def first_test_chat(run: Path) -> dict:
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    return val_test_chats(data["n_train"], data["n_val"], data["n_test"], data["seed"])[1][0]


def test_prompt_answers_as_the_scorer_decoded_it(run: Path) -> None:
    """The run's first test chat, asked through chat: the answer and parsed call predictions.jsonl holds."""
    messages = first_test_chat(run)["messages"]
    system, request = messages[0]["content"], messages[1]["content"]
    max_new = yaml.safe_load((run / "config.yaml").read_text())["eval"]["max_new_tokens"]
    result = chat(run, "--prompt", request, "--system", system, "--max-new-tokens", max_new, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout)
    scored = json.loads((run / "predictions.jsonl").read_text().splitlines()[0])
    assert scored["request"] == request
    assert got["answer"] == scored["output"] and got["answer"]
    assert got["tool_call"] == scored["parsed"]
    assert (got["format"], got["error"]) == (scored["format"], scored["parse_error"])


def test_prompt_streams_the_answer_then_the_call_it_read(run: Path) -> None:
    result = chat(run, "--prompt", "Add a node at x=2 m.", "--max-new-tokens", 16)
    assert result.returncode == 0, result.stderr[-3000:]
    *answer, call_line, _ = result.stdout.split("\n")
    assert "".join(answer).strip(), "an answer was streamed"
    assert call_line == describe_call(parse_tool_call("\n".join(answer)))
    # what was loaded and rendered, on stderr: the run's adapter and its data's system prompt
    assert f"adapter {run / 'adapter'}" in result.stderr
    assert f"system prompt: {first_default_system(run)}" in result.stderr
    assert "tools: none" in result.stderr
    assert re.search(r"\[\d+ tokens in [\d.]+ s; prompt \d+ tokens, 0 from the cache\]", result.stderr)


def first_default_system(run: Path) -> str:
    from sweeplab.data.toolcalls import generate_chats

    seed = yaml.safe_load((run / "config.yaml").read_text())["data"]["seed"]
    return generate_chats(1, seed)[0]["messages"][0]["content"]


def test_scripted_session_commands_and_saved_training_row(run: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    saved = tmp_path / "rows.jsonl"
    fixed = '{"name": "POST /db/node", "arguments": {"id": 3}}'
    script = [
        "Add node 3 at the origin.",
        "/max 6",
        "/temp 0",
        "Now delete it.",  # its prompt starts with the first exchange: that part comes from the cache
        "/retry",
        "/undo",
        f"/fix {fixed}",
        "/system You call tools.",
        f"/save {saved}",
        "/temp -1",
        "/max many",
        "/bogus",
        "/help",
        "/clear",
        f"/save {saved}",
        "/quit",
        "never read",
    ]
    result = chat(run, "--tools", tools, "--max-new-tokens", 8, stdin="\n".join(script) + "\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "tools: ping" in result.stderr
    assert "max new tokens 6" in out and "temperature 0.0" in out
    assert out.count("tool call: ") == 3  # two requests and one retry
    stats = re.findall(
        r"\[(\d+) tokens in [\d.]+ s; prompt (\d+) tokens, (\d+) from the cache\]", result.stderr
    )
    (new1, _, reused1), (new2, prompt2, reused2), (new3, prompt3, reused3) = stats
    assert int(new1) <= 8 and int(new2) <= 6 and new3 == new2  # /max took effect
    assert int(reused1) == 0 and int(reused2) > 0
    assert prompt3 == prompt2 and int(reused3) == int(prompt3) - 1  # the retry re-feeds one token only
    answers = re.findall(r"assistant> (.*?)\ntool call: ", out, re.DOTALL)
    assert answers[1] == answers[2], "greedy: a retry gives the same answer"
    assert "dropped the last exchange" in out and "last answer replaced" in out
    assert "system prompt: You call tools." in out
    assert "/temp needs a number >= 0" in out and "/max needs a whole number > 0" in out
    assert "unknown command /bogus" in out and "/fix TEXT" in out
    assert "nothing to save: no answer yet" in out  # after /clear
    assert "never read" not in out
    rows = read_jsonl(saved)  # the training reader takes the saved row as it is
    assert len(rows) == 1
    assert rows[0]["messages"] == [
        {"role": "system", "content": "You call tools."},
        {"role": "user", "content": "Add node 3 at the origin."},
        {"role": "assistant", "content": fixed},
    ]
    assert [t["function"]["name"] for t in rows[0]["tools"]] == ["ping"]


def test_ctrl_c_stops_an_answer_not_the_session(run: Path, tmp_path: Path) -> None:
    """The untouched tiny base never ends a turn: Ctrl-C must end its 400-token answer early."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeplab.chat", str(run), "--no-adapter", "--max-new-tokens", "400"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        read = b""
        deadline = time.monotonic() + 240

        def read_until(done, within: float | None = None) -> bool:
            """Read until done(text); False once `within` s (or the test's deadline) pass, never a hang."""
            nonlocal read
            until = min(deadline, time.monotonic() + within) if within else deadline
            while not done(read):
                left = until - time.monotonic()
                if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                    assert within, read  # the deadline: fail with what was read
                    return False
                chunk = os.read(proc.stdout.fileno(), 1)
                assert chunk, read  # the chat ended
                read += chunk
            return True

        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        read_until(lambda text: b"assistant> " in text and len(text.split(b"assistant> ", 1)[1]) >= 2)
        proc.send_signal(signal.SIGINT)  # mid-answer
        read_until(lambda text: text.endswith(b"you> "))
        # At the prompt the session stays. A SIGINT that lands while the process is between printing
        # the prompt and blocking on stdin can wait for the next read (CPython): press again, as a person
        # would. Typed input only after it is handled: CPython drops a line that arrives with the signal.
        for _ in range(10):
            proc.send_signal(signal.SIGINT)
            if read_until(lambda text: b"(Ctrl-D or /quit leaves)" in text, within=3):
                break
        stdout, stderr = proc.communicate(b"/undo\n/quit\n", timeout=120)
    finally:
        proc.kill()
    stdout = (read + stdout).decode(errors="replace")
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert "[stopped]" in stdout and "(Ctrl-D or /quit leaves)" in stdout
    assert "dropped the last exchange" in stdout
    new = int(re.search(r"\[(\d+) tokens in", stderr.decode()).group(1))
    assert 0 < new < 400


def test_kv_cache_reuse_gives_the_answers_of_a_fresh_conversation(run: Path) -> None:
    """Turn two from the cache, and again after an undo (the cache cut back): as if rendered from scratch."""
    from sweeplab.eval.conversation import Conversation, Settings
    from sweeplab.models.saved import find_saved, load_saved

    model, tokenizer = load_saved(find_saved(run))
    settings = Settings(max_new_tokens=12)
    talk = Conversation(tokenizer, system="Reply with one JSON tool call.")
    talk.ask(model, "Create node 4 at x=1 m.", settings)
    second = talk.ask(model, "Move node 4 to y=2 m.", settings)
    assert second.reused_tokens > 0
    fresh = Conversation(tokenizer, system=talk.system)
    fresh.turns = talk.turns[:3]
    assert fresh.answer(model, settings).text == second.text
    talk.undo()
    again = talk.ask(model, "Move node 4 to y=2 m.", settings)
    assert again.reused_tokens == again.prompt_tokens - 1 and again.text == second.text
    talk.system = "Something else."  # the first token after the template's start differs: little reused
    changed = talk.ask(model, "Delete node 4.", settings)
    assert changed.reused_tokens < 10


def make_adapter_without_base(run: Path, tmp_path: Path) -> Path:
    adapter = tmp_path / "orphan"
    shutil.copytree(run / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("unfinished run", "this run dir has no adapter"),
        ("missing base", "its base model"),
        ("tools not a list", "expected a JSON list of objects"),
        ("tool without a name", "tools[0].name: missing"),
        ("tools not JSON", "not valid JSON"),
        ("no such path", "no such directory"),
    ],
)
def test_bad_input_is_one_clear_line(case: str, says: str, run: Path, tmp_path: Path) -> None:
    target, extra = run, []
    if case == "unfinished run":
        target = tmp_path / "half"
        target.mkdir()
        shutil.copy(run / "config.yaml", target / "config.yaml")
    elif case == "missing base":
        target = make_adapter_without_base(run, tmp_path)
    elif case == "no such path":
        target = tmp_path / "nowhere"
    else:
        tools = tmp_path / "tools.json"
        body = {"tools not a list": json.dumps(TOOLS[0]), "tool without a name": json.dumps([{"x": 1}])}
        tools.write_text(body.get(case, "[{not json"))
        extra = ["--tools", tools]
    result = chat(target, *extra, "--prompt", "hi")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeplab.chat: error: ") and says in lines[0], (
        result.stderr
    )
    assert result.stdout == ""


def test_merged_model_talks_and_refuses_no_adapter(run: Path, tmp_path: Path) -> None:
    """A merged export (full precision, no adapter) loads as it is; --no-adapter has nothing to drop."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = run / "adapter"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = run.parent / "merged_for_chat"  # beside the run, as export writes it: no config.yaml above
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(merged)
    result = chat(merged, "--prompt", "Add node 1.", "--max-new-tokens", 6, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"merged model {merged}" in result.stderr and "system prompt: none" in result.stderr
    assert json.loads(result.stdout)["new_tokens"] <= 6
    refused = chat(merged, "--no-adapter", "--prompt", "hi")
    assert refused.returncode != 0 and "is a merged model" in refused.stderr


def test_the_call_line_and_training_row_read_answers_as_the_scorer() -> None:
    from sweeplab.eval.conversation import Conversation

    bare = '{"name": "GET /db/node", "arguments": {"id": 4}}'
    assert describe_call(parse_tool_call(bare)) == 'tool call: GET /db/node {"id": 4}  [json]'
    tagged = '<tool_call>\n{"name": "ping", "arguments": {"host": "a"}}\n</tool_call>'
    assert describe_call(parse_tool_call("Sure! " + tagged)) == (
        'tool call: ping {"host": "a"}  [tagged; not exact-eligible: text around the tool call]'
    )
    assert describe_call(parse_tool_call("no call")) == "tool call: none (no JSON object found)"
    talk = Conversation(tokenizer=None, system="S", tools=[{"type": "function", "function": TOOLS[0]}])
    talk.turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": tagged},  # exactly one call in tags: stored as tool_calls
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": bare},  # bare JSON: kept as the text the model learned
    ]
    row = talk.training_row()
    assert row["messages"][2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "ping", "arguments": {"host": "a"}}}],
    }
    assert row["messages"][4] == {"role": "assistant", "content": bare}
    assert row["tools"] == talk.tools


def test_data_prompt_is_the_runs_first_system_prompt_and_every_tool(tmp_path: Path) -> None:
    from sweeplab.config import DataConfig
    from sweeplab.data.chat_inputs import data_prompt

    def row(system: str, names: list[str]) -> str:
        tools = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in names]
        call = {"type": "function", "function": {"name": names[0], "arguments": {}}}
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "u"}]
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        return json.dumps({"messages": messages, "tools": tools})

    path = tmp_path / "chats.jsonl"
    path.write_text(row("first", ["a", "b"]) + "\n" + row("second", ["b", "c"]) + "\n")
    system, tools = data_prompt(DataConfig(source="jsonl", path=str(path)))
    assert system == "first" and [t["function"]["name"] for t in tools] == ["a", "b", "c"]
    system, tools = data_prompt(DataConfig(seed=7))
    from sweeplab.data.toolcalls import generate_chats

    assert system == generate_chats(1, 7)[0]["messages"][0]["content"] and tools is None
