"""The shape of the code (docs: "How it works"): imports point down, no circles, small files,
``dnnkit.nn`` free of Lightning, callbacks free of dnnkit's modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dnnkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The dnnkit modules ``path`` imports, at module level or inside functions (not under
    ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dnnkit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dnnkit"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_circle():
    edges = graph()
    # a package's __init__ re-exporting its children is not a circle with them
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and edges.get(t, set()) >= {m})} for m, ts in edges.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodule
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail(f"import circle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])


def test_layers_point_down():
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("dnnkit.nn"):
            assert not {t for t in targets if not t.startswith(("dnnkit.nn", "dnnkit.errors", "dnnkit.io"))}, name
        if name.startswith("dnnkit.callbacks"):
            assert not {t for t in targets if t.startswith(("dnnkit.modules", "dnnkit.runner", "dnnkit.train"))}, name
        assert not {t for t in targets if t in ("dnnkit.train",)}, f"{name} imports the entry point"


def test_no_file_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long


@pytest.mark.slow  # a fresh interpreter importing torch: ~5 s
def test_import_dnnkit_nn_loads_no_lightning():
    code = "import sys, dnnkit.nn, dnnkit.nn.health; assert not [m for m in sys.modules if m.startswith('lightning')]"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
