"""User data files: every malformed input fails with file:line and what is allowed."""

import json
import re

import pytest

from sweeplab.data import read_jsonl, read_text
from sweeplab.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def write_lines(path, *lines: str):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_chats_and_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "chats.jsonl", json.dumps(GOOD), "", "   ", json.dumps(GOOD))
    assert read_jsonl(path) == [GOOD, GOOD]


def test_reads_text_with_bom(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("\ufeffsome text".encode())
    assert read_text(path) == "some text"


@pytest.mark.parametrize("reader", [read_jsonl, read_text])
def test_missing_file(tmp_path, reader):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file.*data\.path"):
        reader(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("reader", [read_jsonl, read_text])
def test_empty_file(tmp_path, reader):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.jsonl: file is empty; expected"):
        reader(path)


@pytest.mark.parametrize("reader", [read_jsonl, read_text])
def test_not_utf8_names_the_line(tmp_path, reader):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"messages": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not UTF-8"):
        reader(path)


BAD_LINES = [
    ('{"messages": [', "malformed JSON"),
    ("[1, 2]", "expected one"),
    ('{"chat": []}', "expected one"),
    ('{"messages": "hi"}', "expected one"),
    ('{"messages": ["hi"]}', r"messages\[0\] is not an object"),
    ('{"messages": [{"content": "hi"}]}', "role is missing; allowed roles: system, user, assistant, tool"),
    ('{"messages": [{"role": "function", "content": "x"}]}', "role is 'function'; allowed roles: system"),
    ('{"messages": [{"role": "tool", "content": "x"}]}', "no assistant turn"),  # tool results are valid input
    ('{"messages": [{"role": "user", "content": 3}]}', "content must be a string"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"messages": []}', "no assistant turn"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_bad_line_names_file_line_and_problem(tmp_path, line, problem):
    # Line 3 after a good line and a blank one: numbering counts blank lines as in an editor.
    path = write_lines(tmp_path / "chats.jsonl", json.dumps(GOOD), "", line)
    with pytest.raises(DataError, match=re.escape("chats.jsonl:3: ") + ".*" + problem):
        read_jsonl(path)
