"""The import structure of ``engine/``: no cycles, and none of the arrows the layering forbids.

Imports are read from the source with ``ast`` (module-level and function-level alike: a lazy import is still an
arrow), so a new cycle or a forbidden import fails here before anyone has to draw the structure.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every module named by an import in ``path``: engine modules resolved to the file they name (``from engine.io
    import fs`` is ``engine.io.fs``, ``from engine.layout import join`` is ``engine.layout``), third-party ones by
    their top-level package."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        out |= {name if name.startswith("engine") else name.split(".")[0] for name in names}
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(p, known) - {m} for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_resolves_from_imports_to_modules(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("from engine.io import fs\nfrom engine.layout import join\nimport torch.nn\n")
    assert _imports(src, {"engine.io", "engine.io.fs", "engine.layout"}) == {
        "engine.io.fs",
        "engine.layout",
        "torch",
    }


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert _cycles(graph) == []


def _offenders(graph: dict[str, set[str]], importer: str, imported: str) -> list[str]:
    return sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m == importer or m.startswith(importer + ".")
        for t in targets
        if t == imported or t.startswith(imported + ".")
    )


@pytest.mark.parametrize(
    ("importer", "imported", "why"),
    [
        ("engine.thresholds", "torch", "threshold policies are pure numpy (online use passes numpy arrays)"),
        ("engine.thresholds", "ray", "threshold policies are pure numpy"),
        ("engine.train", "engine.stages", "training is a library the train stage calls, never the other way"),
        ("engine.models", "engine.stages", "models know nothing of stages"),
        ("engine.data", "engine.stages", "transforms know nothing of stages"),
        ("engine.sources", "engine.stages", "format adapters only list rows"),
        ("engine.schemas", "engine.stages", "schemas sit below every stage"),
        ("engine.review", "engine.stages", "review rules, formats and answers sit below the stages that use them"),
        ("engine.review", "engine.round", "importing answers never runs a round"),
        ("engine.layout", "engine", "the layout names paths and imports nothing of the engine"),
        ("engine.stages", "engine.round", "stages do not know the round that runs them"),
        ("engine.stages", "engine.campaign", "stages do not know the campaign that runs them"),
        ("engine.stages", "engine.products", "products consume finished rounds; no stage needs one"),
        ("engine.train", "engine.products", "products consume finished rounds; training needs none"),
        ("engine.products", "engine.round", "products read committed rounds (engine.stored), they never run one"),
        ("engine.products", "engine.campaign", "products read committed rounds (engine.stored), they never run one"),
    ],
)
def test_forbidden_arrow(graph: dict[str, set[str]], importer: str, imported: str, why: str) -> None:
    bad = [o for o in _offenders(graph, importer, imported) if not o.split(" -> ")[1].startswith(importer)]
    assert bad == [], why


def test_only_tracking_imports_mlflow(graph: dict[str, set[str]]) -> None:
    assert {m.split(".")[1] for m, targets in graph.items() if "mlflow" in targets} == {"tracking"}
