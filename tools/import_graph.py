"""Import graph of stori_pl: every ``import`` / ``from ... import`` (module level and inside functions) between
stori_pl modules, and the graph of its subpackages with their layers. Prints the package graph, each package's
layer, the upward edges and the cycles (of modules and of packages) and the number of imports made inside
functions; exit 1 on a cycle or an upward edge.

    python tools/import_graph.py

Layers, lowest first; an import may point to its own layer or a lower one, never higher (:data:`LAYERS`)::

    stori_pl (version, lazy public API), utils
    text, image           pure-torch cores: CLIP loading, the SToRI encoder, the towers, the SAE core
    data                  datamodules, feature caches, activations
    models                LightningModules, checkpoint reading and the one loader
    interpret, retrieval  reading a classifier; retrieval with weighted prompts
    lightning             callbacks, prediction writer, results file
    toy                   the toy world (registers itself in the registries of the layers below)
    cli, __main__         the ``stori`` command
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


LAYERS: tuple[tuple[str, ...], ...] = (
    ("stori_pl", "utils"),
    ("text", "image"),
    ("data",),
    ("models",),
    ("interpret", "retrieval"),
    ("lightning",),
    ("toy",),
    ("cli", "__main__"),
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def package_of(module: str) -> str:
    """``stori_pl.data.features`` -> ``data``; a top-level module (``stori_pl.utils``) is its own package;
    ``stori_pl`` (the root ``__init__``) is ``stori_pl``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, dict[str, list[str]]]:
    """``package -> {package it imports: ["a -> b" module edges]}`` (edges within a package left out)."""
    out: dict[str, dict[str, list[str]]] = {package_of(m): {} for m in graph}
    for a, targets in graph.items():
        for b in targets:
            pa, pb = package_of(a), package_of(b)
            if pa != pb:
                out[pa].setdefault(pb, []).append(f"{a} -> {b}")
    return out


def upward_edges(packages: dict[str, dict[str, list[str]]]) -> list[str]:
    """Imports from a package to one in a higher layer (or to a package without a layer), one line each."""
    out = []
    for pa, targets in sorted(packages.items()):
        for pb, why in sorted(targets.items()):
            if pa not in RANK or pb not in RANK or RANK[pb] > RANK[pa]:
                out += [f"{w}  ({pa} layer {RANK.get(pa, '?')} -> {pb} layer {RANK.get(pb, '?')})" for w in sorted(why)]
    return out


def function_level_imports() -> list[str]:
    """``module:line -> target`` of every import of a stori_pl module made inside a function or class."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body} | {id(c) for n in tree.body if isinstance(n, (ast.If, ast.Try))
                                             for c in ast.walk(n) if isinstance(c, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n == "stori_pl" or n.startswith("stori_pl.") for n in names):
                    out.append(f"{module_name(path)}:{node.lineno} -> {', '.join(names)}")
    return out


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
    graph = edges(modules)
    found = cycles(graph)
    packages = package_graph(graph)
    package_cycles = cycles({p: set(t) for p, t in packages.items()})
    up = upward_edges(packages)
    print("package graph (layer: package -> the packages it imports):")
    for pkg in sorted(packages, key=lambda p: (RANK.get(p, -1), p)):
        print(f"  {RANK.get(pkg, '?')}: {pkg:<10} -> {', '.join(sorted(packages[pkg], key=lambda p: (RANK.get(p, -1), p))) or '-'}")
    for comp in found:
        print("import cycle:", " <-> ".join(comp))
    for comp in package_cycles:
        print("package cycle:", " <-> ".join(comp))
    for line in up:
        print("upward import:", line)
    inner = function_level_imports()
    print(f"{len(modules)} modules, {len(packages)} packages, {len(found)} import cycles, {len(package_cycles)} "
          f"package cycles, {len(up)} upward imports, {len(inner)} stori_pl imports inside functions")
    return 1 if found or package_cycles or up else 0


if __name__ == "__main__":
    sys.setrecursionlimit(10000)
    raise SystemExit(main())
