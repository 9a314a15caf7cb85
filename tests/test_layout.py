"""The house: subpackages per concern in layers that import downwards only (function-level imports included),
no import cycle of modules or of packages (`python tools/import_graph.py` prints the package graph)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(REPO / "tools"))
import import_graph  # noqa: E402


def module_graph() -> dict[str, set[str]]:
    return import_graph.edges({import_graph.module_name(p) for p in import_graph.ROOT.rglob("*.py")})


def test_no_import_cycles():
    graph = module_graph()
    assert "stori_pl.toy.data" in graph and "stori_pl.retrieval.attributes" in graph["stori_pl.toy.data"]
    assert import_graph.cycles(graph) == []
    # the checker finds a circle (toy data -> retrieval runner -> attributes -> toy data)
    old = {"toy": {"runner"}, "runner": {"attributes"}, "attributes": {"toy"}, "clip": set()}
    assert import_graph.cycles(old) == [["attributes", "runner", "toy"]]


def test_packages_import_downwards_only():
    """text, image < data < models < interpret, retrieval < lightning < toy < cli; no package cycle."""
    packages = import_graph.package_graph(module_graph())
    assert set(packages) <= set(import_graph.RANK), set(packages) - set(import_graph.RANK)
    assert import_graph.upward_edges(packages) == []
    assert import_graph.cycles({p: set(t) for p, t in packages.items()}) == []
    assert "interpret" in packages["lightning"] and "toy" in packages["cli"]  # the graph sees real edges


def test_checker_finds_upward_edges_inside_functions(tmp_path, monkeypatch):
    """A function-level import from data up to toy is an upward edge."""
    pkg = tmp_path / "stori_pl"
    for sub in ("data", "toy"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "toy" / "world.py").write_text("X = 1\n")
    (pkg / "data" / "images.py").write_text("def f():\n    from stori_pl.toy.world import X\n    return X\n")
    monkeypatch.setattr(import_graph, "ROOT", pkg)
    graph = import_graph.edges({import_graph.module_name(p) for p in pkg.rglob("*.py")})
    up = import_graph.upward_edges(import_graph.package_graph(graph))
    assert up == ["stori_pl.data.images -> stori_pl.toy.world  (data layer 2 -> toy layer 6)"]
    assert import_graph.function_level_imports() == ["stori_pl.data.images:2 -> stori_pl.toy.world"]


def test_import_graph_command_passes():
    out = subprocess.run([sys.executable, str(REPO / "tools" / "import_graph.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "0 import cycles, 0 package cycles, 0 upward imports" in out.stdout


def test_retrieval_library_never_imports_the_toy_world():
    graph = module_graph()
    for module in ("stori_pl.retrieval.attributes", "stori_pl.retrieval.runner", "stori_pl.retrieval.metrics"):
        assert not any(m.startswith("stori_pl.toy") for m in graph[module]), module


def test_top_level_has_few_modules():
    top = [p.name for p in (REPO / "stori_pl").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(top) <= 6, top


def test_public_api_and_documented_import_paths():
    import stori_pl

    for name in ("load_clip", "WeightedTextEncoder", "PreparedPrompts", "parse_weighted_prompt", "StoriClassifier",
                 "ZeroShotCLIP", "TaskRes"):
        assert getattr(stori_pl, name) is not None, name
    assert stori_pl.parse_weighted_prompt("a (red:1.5) car")[0] == "a red car"
    for module in ("stori_pl.text.clip", "stori_pl.text.encoder", "stori_pl.text.syntax", "stori_pl.data.features",
                   "stori_pl.interpret.viz", "stori_pl.retrieval.runner", "stori_pl.toy.world", "stori_pl.cli.embed",
                   "stori_pl.lightning.callbacks", "stori_pl.data.image_folder", "stori_pl.image.sae"):
        importlib.import_module(module)
