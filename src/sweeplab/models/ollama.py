"""An ollama Modelfile beside an exported GGUF: FROM, the chat template in Go template form, stop tokens."""

from __future__ import annotations

import re
from typing import Any

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# End-of-turn tokens of common chat formats: a stop for ollama when the tokenizer has them.
TURN_ENDS = (IM_END, "<|eot_id|>", "<|endoftext|>")
# Sentinels rendered through the Jinja template to read its layout off the text it produces.
PROBE = [
    {"role": "system", "content": "S-1"},
    {"role": "user", "content": "U-1"},
    {"role": "assistant", "content": "A-1"},
    {"role": "user", "content": "U-2"},
]


def chatml(messages: list[dict]) -> str:
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)


def chatml_default_system(tokenizer: Any, template: str) -> tuple[bool, str | None]:
    """(is the template ChatML, the system prompt it inserts when a chat has none)."""

    def render(messages: list[dict]) -> str | None:
        try:
            return tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        except Exception:  # a template that raises on our probe is not one we can translate
            return None

    generation = f"{IM_START}assistant\n"
    if render(PROBE) != chatml(PROBE) + generation:
        return False, None
    bare, tail = render(PROBE[1:2]), chatml(PROBE[1:2]) + generation
    if bare is None or not bare.endswith(tail):
        return False, None
    head = bare[: -len(tail)]
    if not head:
        return True, None
    default = re.fullmatch(rf"{re.escape(IM_START)}system\n(.*){re.escape(IM_END)}\n", head, re.S)
    return (True, default.group(1)) if default else (False, None)


def go_template(default_system: str | None) -> str:
    """ChatML over ollama's .Messages; the template's own system prompt when the chat brings none."""
    turn = "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    if default_system is None:
        return "{{- range .Messages }}" + turn + "{{ end }}<|im_start|>assistant\n"
    return (
        "{{- range $i, $_ := .Messages }}"
        '{{- if and (eq $i 0) (ne .Role "system") }}'
        f"<|im_start|>system\n{default_system}<|im_end|>\n"
        "{{ end }}" + turn + "{{ end }}<|im_start|>assistant\n"
    )


def modelfile(gguf_file: str, tokenizer: Any, template: str | None) -> str:
    """The Modelfile text; a template that is not ChatML is left to ollama, which reads it from the GGUF."""
    is_chatml, default_system = chatml_default_system(tokenizer, template) if template else (False, None)
    vocab = tokenizer.get_vocab()
    stops = [t for t in dict.fromkeys([tokenizer.eos_token, *TURN_ENDS]) if t and t in vocab]
    if is_chatml and IM_START in vocab:
        stops.append(IM_START)
    lines = [
        "# ollama create NAME -f Modelfile   (written by python -m sweeplab.export)",
        f"FROM ./{gguf_file}",
    ]
    if is_chatml:
        lines.append(f'TEMPLATE """{go_template(default_system)}"""')
    else:
        lines.append("# no TEMPLATE: the chat template is not ChatML; ollama matches the GGUF's own one")
    lines += [f'PARAMETER stop "{t}"' for t in stops]
    return "\n".join(lines) + "\n"
