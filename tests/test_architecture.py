"""The package's structure: layers, no import circles, small modules, a short README.

Every import counts, also those inside functions (parsed with ``ast``, nothing is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("culnig", "attribution", "masking", "culnig_tasks")
LIBRARIES = ("attribution", "masking", "culnig_tasks")
# The application: everything that runs or presents a job; the rest of culnig/ is the kernel.
APPLICATION = ("culnig.cli", "culnig.sweep", "culnig.finetune", "culnig.reports", "culnig.demo",
               "culnig.evaluate", "culnig.results", "culnig.harness", "culnig.envinfo",
               "culnig.vllm_lm", "culnig.engine")
MAX_LINES = 600
MAX_README = 20_000


def _modules() -> dict[str, Path]:
    mods = {}
    for root in ROOTS:
        for f in (REPO / root).rglob("*.py"):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (relative imports resolved)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                r = _resolve(t, mods)
                # a submodule importing its own package's __init__ is how packages work
                if r and r != m and not m.startswith(r + "."):
                    graph[m].add(r)
    return graph


def _layer(module: str) -> str:
    if module.split(".")[0] in LIBRARIES:
        return "library"
    if any(module == a or module.startswith(a + ".") for a in APPLICATION):
        return "application"
    return "kernel"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_circles():
    circles = strongly_connected(import_graph())
    assert not circles, "import circles: " + "; ".join(" ".join(c) for c in circles)


def test_layers_import_only_downwards():
    bad = []
    for m, deps in import_graph().items():
        for d in deps:
            lm, ld = _layer(m), _layer(d)
            if (lm, ld) in {("kernel", "library"), ("kernel", "application"),
                            ("library", "application")}:
                bad.append(f"{m} ({lm}) imports {d} ({ld})")
    assert not bad, "\n".join(sorted(bad))


def test_the_checks_can_fail():
    """The circle finder and the layer rule on a made-up graph."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert _layer("culnig.cli.eval") == "application" and _layer("culnig.registry") == "kernel"
    assert _layer("masking.bake") == "library"


@pytest.mark.parametrize("root", ROOTS)
def test_modules_are_small(root):
    big = [f"{f.relative_to(REPO)} {n}" for f in (REPO / root).rglob("*.py")
           if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines: {', '.join(big)}"


def test_readme_is_short_and_names_the_setup_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text) <= MAX_README, f"README.md has {len(text)} characters (max {MAX_README})"
    assert "make demo" in text and "make test" in text
