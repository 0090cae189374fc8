"""The task's answer in the report: held-out tool-call accuracy per trial, and what the best gets wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.report.table import md_cell, rung_value, test_columns, value_cell

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


def test_section(
    metric: str, trials: list[FrozenTrial], best: FrozenTrial | None, study: Any = None
) -> list[str]:
    """The best trial and each hand-set recipe side by side: the objective next to held-out accuracy."""
    columns = test_columns(trials)
    if not columns:
        return []
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    picked = [t for t in trials if t.user_attrs.get("recipe") and t.number not in retried]
    if best is not None and best not in picked:
        picked.insert(0, best)
    lines = [
        "## Held-out test split",
        "",
        "Each finished trial scores its adapter once on the test split (never used to select it); base = "
        "the same model with the adapter switched off.",
        "",
        f"| trial | role | {metric} | " + " | ".join(columns) + " |",
        "|---:|---|---:|" + "---:|" * len(columns),
    ]
    for t in picked:
        role = "best" if best is not None and t.number == best.number else ""
        if t.user_attrs.get("recipe"):
            role = f"{role}, recipe {t.user_attrs['recipe']}".lstrip(", ")
        cells = [md_cell(t.user_attrs.get(c)) for c in columns]
        value = (rung_value(study, t) if study is not None else None) or value_cell(t)
        lines.append(f"| {t.number} | {role} | {value} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def failures_section(best: FrozenTrial | None, limit: int = 5) -> list[str]:
    """A handful of the best trial's wrong test answers, read from its predictions.jsonl."""
    run_dir = best.user_attrs.get("run_dir") if best is not None else None
    path = Path(run_dir) / "predictions.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    wrong = [r for r in records if not r["verdict"]["exact"]]
    lines = [f"## What the best trial gets wrong ({len(wrong)} of {len(records)} test chats)", ""]
    if not wrong:
        return [*lines, "Every test chat got the exact call.", ""]
    lines += ["| request | expected | output | verdict |", "|---|---|---|---|"]
    for r in wrong[:limit]:
        verdict = r["verdict"]
        problems = [f"{k}: {v}" for k, v in verdict.get("fields", {}).items() if v != "ok"]
        if not verdict["json_valid"]:
            problems.insert(0, f"no tool call read ({r.get('parse_error') or 'unparsed'})")
        elif not verdict["tool_name"]:
            problems.insert(0, f"wrong tool {r['parsed']['name']!r}")
        elif not problems:
            problems.append(f"text around the call ({r['format']})")
        cells = [
            r["request"],
            json.dumps(r["expected"], ensure_ascii=False),
            r["output"],
            "; ".join(problems),
        ]
        lines.append("| " + " | ".join(md_cell(c, limit=160) for c in cells) + " |")
    return [*lines, "", f"All of them: `{path}`.", ""]
