"""Shared by the bench scripts: each owns one marked section of BENCHMARKS.md and rewrites only it."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor()
    )


def replace_section(path: Path, start: str, end: str, section: str) -> None:
    """`section` runs from `start` to `end` inclusive; other scripts' sections stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by `make bench`.\n"
    if start in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
