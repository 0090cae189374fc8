"""The package's house rule: one direction, top to bottom; nothing low imports anything high."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# Lowest first. A module may import its own layer and any layer below it, never one above.
LAYERS = [
    {"errors", "quiet", "rng", "outputs", "secrets", "config", "reuse", "trust"},
    {"data"},
    {"models"},
    {"eval"},
    {"training"},
    {"sweep"},
    {"report"},
    {"train", "estimate", "compare", "export", "chat", "hydra_callbacks", "__init__"},
]
LEVEL = {name: k for k, names in enumerate(LAYERS) for name in names}
PLUGIN = len(LAYERS)  # hydra_plugins.sweeplab_sweeper sits on top: it drives the train app


def unit(module: str) -> str | None:
    """'sweeplab.models.build' -> 'models'; None for anything outside the package."""
    parts = module.split(".")
    return (
        parts[1]
        if parts[0] == "sweeplab" and len(parts) > 1
        else ("__init__" if module == "sweeplab" else None)
    )


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = (
                [f"{node.module}.{a.name}" for a in node.names]
                if node.module == "sweeplab"
                else [node.module]
            )
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def test_every_module_has_a_layer() -> None:
    units = {
        p.stem if p.parent.name == "sweeplab" else p.parent.name for p in (SRC / "sweeplab").rglob("*.py")
    }
    assert units <= set(LEVEL), f"place these in LAYERS: {sorted(units - set(LEVEL))}"


def test_nothing_low_imports_anything_high() -> None:
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        own = PLUGIN if rel.parts[0] == "hydra_plugins" else LEVEL[rel.parts[1].removesuffix(".py")]
        for line, module in imports(path):
            target = unit(module)
            if target is not None and target in LEVEL and LEVEL[target] > own:
                upward.append(f"{rel}:{line} imports {module}")
    assert not upward, "imports that point up the house:\n" + "\n".join(upward)
