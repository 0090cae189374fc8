"""Talk to a trained adapter, with the run's own chat template and tools, and see the tool call it makes.

python -m sweeplab.chat outputs/runs/<run_name>                    # a conversation; /help lists commands
python -m sweeplab.chat outputs/runs/<run_name> --prompt "Add node 7 at x=2 m"   # one answer, then exit
python -m sweeplab.chat outputs/runs/<run_name> --no-adapter       # the untouched base, same prompt
python -m sweeplab.chat outputs/runs/<run_name>/merged --tools my_tools.json

Each answer streams as it is generated and is followed by the tool call read from it the way the
scorer reads it. Ctrl-C stops an answer (kept, so /retry or /fix can follow); Ctrl-D or /quit leaves.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sweeplab.errors import SweeplabError

HELP = """commands:
  /temp T        sampling temperature (0: greedy, as the scorer decodes)
  /max N         max new tokens per answer
  /system TEXT   replace the system prompt (/system alone: none)
  /undo          drop the last exchange
  /retry         answer the last request again
  /fix TEXT      replace the last answer with TEXT (then /save it: a training example)
  /clear         start over (the system prompt and tools stay)
  /save [FILE]   append the conversation to FILE as one training row (default chats.jsonl)
  /show          the conversation, settings and tools
  /help          this list
  /quit          leave (or Ctrl-D)"""


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(text)
    return value


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sweeplab.chat", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a run dir, its adapter/ dir or a merged model dir")
    parser.add_argument("--prompt", help="answer this one request, print the answer and its tool call, exit")
    parser.add_argument("--json", action="store_true", help="with --prompt: print one JSON object instead")
    parser.add_argument("--system", help="the system prompt (default: the run's data's first one)")
    parser.add_argument("--tools", type=Path, help="a JSON list of tool schemas (default: the run data's)")
    parser.add_argument("--no-adapter", action="store_true", help="the base alone, with the run's template")
    parser.add_argument("--max-new-tokens", type=positive, default=256, metavar="N")
    parser.add_argument("--temperature", type=non_negative, default=0.0, metavar="T", help="0: greedy")
    args = parser.parse_args(argv)
    if args.json and args.prompt is None:
        parser.error("--json goes with --prompt")
    return args


def run_prompt_defaults(saved: Any) -> tuple[str | None, list[dict] | None]:
    """The run's data's system prompt and tools; a run whose data cannot be read now gets neither."""
    from pydantic import ValidationError

    from sweeplab.config import DataConfig
    from sweeplab.data.chat_inputs import data_prompt

    config = saved.run_config()
    if not config or not config.get("data"):
        return None, None
    try:
        return data_prompt(DataConfig(**config["data"]))
    except (ValidationError, SweeplabError) as err:
        first = str(err).splitlines()[0]
        note(f"the run's data could not be read ({first}): no system prompt or tools; give --system, --tools")
        return None, None


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def respond(model: Any, conversation: Any, settings: Any, stream: bool = True, label: bool = True) -> Any:
    """Answer the last request; Ctrl-C during it ends the answer at the current token, not the program."""
    from sweeplab.eval.conversation import describe_call

    if stream and label:
        write("assistant> ")
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        reply = conversation.answer(model, settings, on_text=write if stream else None, stop=stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    if stream:
        write("\n" + ("[stopped]\n" if reply.stopped else "") + describe_call(reply.parsed) + "\n")
        note(
            f"[{reply.new_tokens} tokens in {reply.seconds:.1f} s; prompt {reply.prompt_tokens} tokens, "
            f"{reply.reused_tokens} from the cache]"
        )
    return reply


def show(conversation: Any, settings: Any) -> None:
    names = [t["function"]["name"] for t in conversation.tools or []]
    write(f"temperature {settings.temperature}, max new tokens {settings.max_new_tokens}\n")
    write(f"tools: {', '.join(names) if names else 'none'}\n")
    for message in conversation.messages():
        write(f"{message['role']}> {message['content']}\n")


def command(line: str, model: Any, conversation: Any, settings: Any) -> bool:
    """Run one /command; False to leave."""
    name, _, arg = line[1:].partition(" ")
    arg = arg.strip()
    if name in ("quit", "exit", "q"):
        return False
    if name in ("help", "h", "?"):
        write(HELP + "\n")
    elif name in ("temp", "temperature"):
        try:
            settings.temperature = non_negative(arg)
        except ValueError:
            write(f"/temp needs a number >= 0 (0: greedy), got {arg!r}\n")
            return True
        write(f"temperature {settings.temperature}\n")
    elif name in ("max", "max-new-tokens"):
        try:
            settings.max_new_tokens = positive(arg)
        except ValueError:
            write(f"/max needs a whole number > 0, got {arg!r}\n")
            return True
        write(f"max new tokens {settings.max_new_tokens}\n")
    elif name == "system":
        conversation.system = arg or None
        write(f"system prompt: {arg}\n" if arg else "no system prompt\n")
    elif name == "undo":
        write("dropped the last exchange\n" if conversation.undo() else "nothing to undo\n")
    elif name == "retry":
        conversation.drop_answer()
        if conversation.turns and conversation.turns[-1]["role"] == "user":
            respond(model, conversation, settings)
        else:
            write("nothing to retry\n")
    elif name == "fix":
        if not arg:
            write("/fix needs the corrected answer: /fix TEXT\n")
        else:
            write("last answer replaced\n" if conversation.correct(arg) else "no answer to fix yet\n")
    elif name == "clear":
        conversation.clear()
        write("conversation cleared\n")
    elif name == "save":
        save(conversation, Path(arg or "chats.jsonl"))
    elif name == "show":
        show(conversation, settings)
    else:
        write(f"unknown command /{name}; /help lists them\n")
    return True


def save(conversation: Any, path: Path) -> None:
    """Append, never overwrite: a file of corrected chats grows one row per /save."""
    if not any(m["role"] == "assistant" for m in conversation.turns):
        write("nothing to save: no answer yet\n")
        return
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(conversation.training_row(), ensure_ascii=False) + "\n")
    except OSError as err:
        write(f"could not save to {path}: {err.strerror}\n")
        return
    write(f"saved as one training row to {path} (data=jsonl data.path={path} trains on it)\n")


def loop(model: Any, conversation: Any, settings: Any) -> None:
    if sys.stdin.isatty():
        import readline  # noqa: F401 - line editing and history for input()
    while True:
        try:
            line = input("you> ")
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:  # at the prompt: a new line, as in a shell
            write("\n(Ctrl-D or /quit leaves)\n")
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            if not command(line.strip(), model, conversation, settings):
                return
            continue
        conversation.turns.append({"role": "user", "content": line})
        respond(model, conversation, settings)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Ctrl-C is this program's to handle, even when started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and CPython then installs no handler of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        from sweeplab.data.chat_inputs import read_tools_file
        from sweeplab.models.saved import find_saved

        saved = find_saved(args.path)
        if args.no_adapter and saved.adapter is None:
            raise SweeplabError(f"--no-adapter: {args.path} is a merged model; give its run dir or adapter")
        tools = read_tools_file(args.tools) if args.tools else None
        system, data_tools = run_prompt_defaults(saved)
        from sweeplab.quiet import quiet_library_noise

        quiet_library_noise()  # before bitsandbytes is imported
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars would sit between the answers
        from sweeplab.models.saved import load_saved

        model, tokenizer = load_saved(saved, use_adapter=not args.no_adapter)
    except SweeplabError as err:
        sys.exit(f"sweeplab.chat: error: {err}")
    from sweeplab.eval.conversation import Conversation, Settings

    system = args.system if args.system is not None else system
    conversation = Conversation(tokenizer, system=system or None, tools=tools or data_tools)
    settings = Settings(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    what = (
        f"merged model {saved.model_dir}"
        if saved.adapter is None
        else f"base {saved.model_dir} alone (--no-adapter)"
        if args.no_adapter
        else f"adapter {saved.adapter} on base {saved.model_dir}"
    )
    names = [t["function"]["name"] for t in conversation.tools or []]
    note(f"{what}\nsystem prompt: {system or 'none'}\ntools: {', '.join(names) if names else 'none'}")
    if args.prompt is None:
        note("/help lists commands; Ctrl-C stops an answer, Ctrl-D leaves")
        return loop(model, conversation, settings)
    conversation.turns.append({"role": "user", "content": args.prompt})
    reply = respond(model, conversation, settings, stream=not args.json, label=False)
    if args.json:
        from sweeplab.eval.generate import call_dict

        parsed = reply.parsed
        call = call_dict(parsed.call) if parsed.call else None
        out = {"answer": reply.text, "tool_call": call, "format": parsed.fmt, "clean": parsed.clean}
        out |= {"error": parsed.error, "new_tokens": reply.new_tokens, "stopped": reply.stopped}
        write(json.dumps(out, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # while the model loads
        sys.exit(130)
