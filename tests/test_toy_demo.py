"""The README's main command, `stori fit --config configs/demo.yaml`, and the demo retrieval config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "stori_pl" / "assets" / "stori-toy.safetensors"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped stori-toy weights missing")


def test_demo_config_uses_the_toy_world():
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert cfg["model"]["init_args"]["clip_model"] == "stori-toy"
    assert cfg["model"]["init_args"]["pretrained"] == "builtin"
    assert cfg["data"]["class_path"] == "stori_pl.toy.data.ToyShapes"
    from stori_pl.toy.data import TOY_START_BLOCK

    assert cfg["model"]["init_args"]["start_block"] == TOY_START_BLOCK
    callbacks = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
    assert "stori_pl.lightning.callbacks.ZeroShotComparison" in callbacks and "stori_pl.lightning.callbacks.WeightPlotCallback" in callbacks


def test_demo_retrieval_config_matches_the_toy_tasks():
    from stori_pl.toy.data import (
        TOY_RETRIEVAL_START_BLOCK,
        TOY_RETRIEVAL_TASKS,
        retrieval_task_phrases,
    )

    cfg = yaml.safe_load((REPO / "configs" / "demo_retrieval.yaml").read_text())
    assert cfg["start_block"] == TOY_RETRIEVAL_START_BLOCK and cfg["model"] == "stori-toy"
    assert [t["attributes"] for t in cfg["tasks"]] == [t["attributes"] for t in TOY_RETRIEVAL_TASKS]
    assert [t["phrases"] for t in cfg["tasks"]] == [retrieval_task_phrases(t) for t in TOY_RETRIEVAL_TASKS]


@pytest.mark.slow
@needs_weights
def test_demo_fit_prints_zero_shot_vs_stori(tmp_path, monkeypatch, capsys):
    import torch

    from stori_pl.cli import main

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    try:
        rc = main(["fit", "--config", str(REPO / "configs" / "demo.yaml"), "--trainer.max_epochs", "3"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    out = capsys.readouterr().out
    assert "zero-shot (same prompts, all weights 1)" in out and "SToRI" in out
    assert (tmp_path / "data" / "toy_shapes" / "split_zhou_ToyShapes.json").is_file()
    results = list((tmp_path / "runs" / "demo").glob("version_*/test_results.json"))
    assert results
    acc = json.loads(results[0].read_text())["metrics"]["test/acc"]
    # seeds 1 / 2 / 3 (seed_everything and data.seed), 3 epochs: zero-shot 86.2% each, SToRI 87.7 / 87.5 / 87.5%
    # (+1.5 / +1.2 / +1.2 points, 6-7 of the 480 test images). The printed figures are the written ones.
    zero, stori = map(float, re.search(r"weights 1\): ([\d.]+)%  →  SToRI: ([\d.]+)%", out).groups())
    assert stori == pytest.approx(100 * acc, abs=0.05)
    assert zero >= 82.0 and 100 * acc >= zero, (zero, acc)


@needs_weights
def test_demo_retrieval_config_runs_and_generates_data(tmp_path, monkeypatch):
    from stori_pl.cli import main

    cfg = yaml.safe_load((REPO / "configs" / "demo_retrieval.yaml").read_text())
    cfg.update(root=str(tmp_path / "data"), out_dir=str(tmp_path / "out"), per_category=6, tasks=cfg["tasks"][:2], sweep=None)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    assert main(["retrieval-eval", "--config", str(path)]) == 0
    assert (tmp_path / "data" / "toy_attributes" / "attributes.csv").is_file()  # `dataset: toy` generated it
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["summary"]) == {"stori", "prompt_weighting"}
    assert {"plain", "w=0.5", "w=1.5"} <= set(report["summary"]["stori"])
