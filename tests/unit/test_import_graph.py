"""The import graph of `src/loratune`, read with `ast` (nothing is imported to build it): no cycles, no
private names taken from another module, and the pure modules load without torch or transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "loratune"

# Pure modules (design.md: "metrics, features, diagnose, decide and the report model never import torch").
PURE = ("loratune.features", "loratune.rules", "loratune.diagnose", "loratune.decide", "loratune.report.model",
        "loratune.metrics")
HEAVY = ("torch", "transformers", "peft")

# A private name taken from another module that is known and owned elsewhere: module -> names. Each entry
# is a debt with its reason; the test fails when an entry is no longer needed, so the list only shrinks.
ALLOWED_PRIVATE: dict[tuple[str, str], set[str]] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _owner(name: str) -> str | None:
    """The module of ours a dotted name lives in (a name inside a module resolves to that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(target module, imported name or None) for every import of ours in the module, at any depth
    (a function-level import is an edge too: it only moves the cycle to run time)."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(_owner(a.name), None) for a in node.names if a.name.split(".")[0] == "loratune"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            if base.split(".")[0] != "loratune":
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full, None) if full in MODULES else (_owner(base), a.name))
    return [(t, n) for t, n in out if t is not None and t != module]


GRAPH = {m: {t for t, _ in _imports(m)} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    assert len(MODULES) > 40
    assert "loratune.report.model" in GRAPH["loratune.report.render"]
    assert "loratune.features" in GRAPH["loratune.diagnose"]


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    detail = [f"{c}: " + "; ".join(f"{a} -> {sorted(GRAPH[a] & set(c))}" for a in c) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_names_from_other_modules():
    reaches: dict[tuple[str, str], set[str]] = {}
    for m in MODULES:
        for target, name in _imports(m):
            if name and name.startswith("_") and not name.startswith("__"):
                reaches.setdefault((m, target), set()).add(name)
    unexpected = {k: v - ALLOWED_PRIVATE.get(k, set()) for k, v in reaches.items()}
    unexpected = {k: v for k, v in unexpected.items() if v}
    assert not unexpected, f"private names imported across modules: {unexpected}"
    stale = {k: v - reaches.get(k, set()) for k, v in ALLOWED_PRIVATE.items()}
    assert not any(stale.values()), f"ALLOWED_PRIVATE entries no longer needed, remove them: {stale}"


def test_pure_modules_exist():
    assert set(PURE) <= set(MODULES)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_torch(module):
    """In a fresh interpreter, so what other tests imported does not hide a transitive import."""
    code = (f"import sys\nimport {module}\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{module} imports {r.stderr.strip().splitlines()[-1]}"
