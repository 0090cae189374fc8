"""Default fine-tuning data: chats whose assistant turn is one JSON call to a structural-analysis API."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from sweeplab.data.endpoints import ENDPOINTS, Call, follow_up

# Kept short and free of the API: the endpoints must be learned from the data, which is what
# gives a sweep over lr / rank / targets something to find.
SYSTEM_PROMPTS = [
    "You drive a structural analysis program through its REST API. Reply with exactly one JSON tool call.",
    "Turn the engineer's request into a single API call. Answer with one JSON object and nothing else.",
    "You are a structural engineering assistant. Respond with one JSON tool call.",
]


def render(call: Call) -> str:
    """Fixed key order and json's default separators: one canonical string per call."""
    name, args = call
    return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)


def turn(request: tuple[str, Call]) -> list[dict]:
    text, call = request
    return [{"role": "user", "content": text}, {"role": "assistant", "content": render(call)}]


def iter_chats(rng: random.Random) -> Iterator[dict]:
    while True:
        first = rng.choice(ENDPOINTS)(rng)
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, *turn(first)]
        second = follow_up(rng, first[1]) if rng.random() < 0.25 else None
        if second is None and rng.random() < 0.05:  # two unrelated requests in one chat
            second = rng.choice(ENDPOINTS)(rng)
        if second is not None:
            messages += turn(second)
        yield {"messages": messages}


def stream(seed: int, split: str) -> random.Random:
    # String seeds are hashed deterministically (not by PYTHONHASHSEED); the split names the stream.
    return random.Random(f"sweeplab.toolcalls/{split}/{seed}")


def generate_chats(n: int, seed: int, split: str = "train") -> list[dict]:
    """Same (n, seed, split) -> the same chats; a larger n extends a smaller one."""
    chats = iter_chats(stream(seed, split))
    return [next(chats) for _ in range(n)]


def train_val_chats(n_train: int, n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Val from its own stream, minus any chat that also occurs in train (short requests can repeat)."""
    train = generate_chats(n_train, seed, "train")
    return train, held_out(n_val, seed, "val", [train])


def val_test_chats(n_train: int, n_val: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Test from a third stream, minus any chat of train or val: scored once, never selected on."""
    train, val = train_val_chats(n_train, n_val, seed)
    return val, held_out(n_test, seed, "test", [train, val])


def held_out(n: int, seed: int, split: str, seen_splits: list[list[dict]]) -> list[dict]:
    seen = {conversation(chat) for chats in seen_splits for chat in chats}
    out: list[dict] = []
    for chat in iter_chats(stream(seed, split)):
        if len(out) == n:
            break
        if conversation(chat) not in seen:
            out.append(chat)
    return out


def conversation(chat: dict) -> str:
    """What makes two chats the same for leakage: the turns, whichever system prompt came first."""
    return json.dumps([m for m in chat["messages"] if m["role"] != "system"])
