"""The house: subpackages per concern, no import cycles, old module paths and checkpoints of stori-pl 0.1 load."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LEGACY = Path(__file__).resolve().parent / "data" / "legacy_main_4d4bab6"  # made by `stori fit` at main 4d4bab6

sys.path.insert(0, str(REPO / "tools"))
import import_graph  # noqa: E402


def test_no_import_cycles():
    graph = import_graph.edges({import_graph.module_name(p) for p in import_graph.ROOT.rglob("*.py")})
    assert "stori_pl.toy.data" in graph and "stori_pl.retrieval.attributes" in graph["stori_pl.toy.data"]
    assert import_graph.cycles(graph) == []
    # the checker finds the circle that 0.1 had (toy data -> retrieval runner -> attributes -> toy data)
    old = {"toy": {"runner"}, "runner": {"attributes"}, "attributes": {"toy"}, "clip": set()}
    assert import_graph.cycles(old) == [["attributes", "runner", "toy"]]


def test_retrieval_library_never_imports_the_toy_world():
    graph = import_graph.edges({import_graph.module_name(p) for p in import_graph.ROOT.rglob("*.py")})
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
                   "stori_pl.lightning.callbacks", "stori_pl.data.image_folder"):
        importlib.import_module(module)


@pytest.mark.parametrize(("old", "name", "new"), [
    ("stori_pl.callbacks", "WeightPlotCallback", "stori_pl.lightning.callbacks"),
    ("stori_pl.compare", "ZeroShotComparison", "stori_pl.lightning.callbacks"),
    ("stori_pl.data.toy", "ToyShapes", "stori_pl.toy.data"),
    ("stori_pl.reweight", "WeightedTextEncoder", "stori_pl.text.encoder"),
    ("stori_pl.prompts", "parse_weighted_prompt", "stori_pl.text.syntax"),
    ("stori_pl.commands.embed", "main", "stori_pl.cli.embed"),
    ("stori_pl.retrieval", "average_precision", "stori_pl.retrieval.metrics"),
])
def test_old_module_paths_still_import(old, name, new):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_checkpoint_of_0_1_loads_and_classifies():
    """A checkpoint written by stori-pl 0.1 (before the regrouping) loads with the class paths it recorded."""
    from stori_pl.models import StoriClassifier

    ckpt = torch.load(LEGACY / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["_class_path"] == "stori_pl.models.StoriClassifier"
    assert ckpt["datamodule_hyper_parameters"]["_class_path"] == "stori_pl.data.toy.ToyShapes"  # an old path
    model = StoriClassifier.load_from_checkpoint(LEGACY / "last.ckpt", map_location="cpu")
    assert model.classnames == ["striped red circle", "dotted red circle", "striped blue circle"]
    assert torch.equal(model.log_weights.detach(), ckpt["state_dict"]["log_weights"])
    feats = model.class_embeddings().detach()  # class embeddings as image features: each is its own class
    assert model.classify_features(feats).argmax(-1).tolist() == [0, 1, 2]


def test_run_config_of_0_1_parses():
    """``stori fit --config runs/.../config.yaml`` of an 0.1 run names stori_pl.callbacks / stori_pl.compare."""
    text = (LEGACY / "config.yaml").read_text()
    assert "stori_pl.callbacks.WeightPlotCallback" in text and "stori_pl.compare.ZeroShotComparison" in text
    out = subprocess.run([sys.executable, "-m", "stori_pl", "fit", "--config", str(LEGACY / "config.yaml"),
                          "--print_config"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "WeightPlotCallback" in out.stdout and "ZeroShotComparison" in out.stdout
