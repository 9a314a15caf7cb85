"""Import graph of stori_pl: every ``import`` / ``from ... import`` (module level and inside functions) between
stori_pl modules; prints the cycles (strongly connected components of more than one module). Exit 1 on a cycle.

    python tools/import_graph.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "stori_pl"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def edges(modules: set[str]) -> dict[str, set[str]]:
    """``module -> modules it imports`` (``from a import b`` counts as ``a.b`` when that is a module).

    Importing a package's submodule also runs the package's ``__init__``, but the ``__init__`` files only
    re-export their own submodules, so edges to parent packages are not added."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in ROOT.rglob("*.py"):
        src = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
            graph[src] |= {n for n in names if n in modules and n != src}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    modules = {module_name(p) for p in ROOT.rglob("*.py")}
    found = cycles(edges(modules))
    for comp in found:
        print("import cycle:", " <-> ".join(comp))
    print(f"{len(modules)} modules, {len(found)} import cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.setrecursionlimit(10000)
    raise SystemExit(main())
