"""The layers import only downwards: core <- model <- risk <- engine <- store <- sim <- service <- cli.

Read from the source (every import statement, lazy ones inside functions and TYPE_CHECKING blocks too), so
a shortcut through a layer fails here rather than in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fluidmargin"
# (dashboard: static files the service serves; sim drives runners of the store: synthetic ingest, replays)
RANK = {
    "core": 0,
    "model": 1,
    "risk": 2,
    "adapters": 3,
    "engine": 3,
    "dashboard": 3,
    "store": 4,
    "sim": 5,
    "service": 6,
    "cli": 7,
}


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return [m for m in out if m.startswith("fluidmargin.")]


def test_every_layer_imports_only_layers_below_it() -> None:
    bad = []
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    for f in files:
        rel = f.relative_to(SRC).parts
        if len(rel) < 2:
            continue  # the package's own __init__ / __main__
        mine = RANK[rel[0]]
        for mod in _imports(f):
            layer = mod.split(".")[1]
            if (layer in RANK and RANK[layer] > mine) or (RANK.get(layer) == mine and layer != rel[0]):
                bad.append(f"{'/'.join(rel)} imports {mod}")
    assert not bad, "\n".join(bad)
