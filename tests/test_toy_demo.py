"""The README's main command, `stori fit --config configs/demo.yaml` (trained once per module), the explanation
quality of the model it trains (issue 14), and the demo retrieval config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "stori_pl" / "assets" / "stori-toy.safetensors"
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped stori-toy weights missing")
# Thresholds on the shipped demo (few-shot seed 1; toy world v2, start block 7, 30 epochs). Measured over few-shot
# seeds 1-3: test accuracy of the tested (best-val) checkpoint 70.3 / 69.0 / 68.4 % against 45.8 % zero-shot of the
# same sentences (template zero-shot: 58.4 %); explain-eval of last.ckpt: discriminative share 1.99 / 2.18 / 2.06,
# precision@3 0.54 / 0.57 / 0.55 (issue 14's 0.6 is not reached at block 7), sink share 0.36 / 0.33 / 0.36 (uniform
# weights 0.67). Contrastive sign agreement (issue 22), few-shot seeds 1-5: 0.77 / 0.76 / 0.77 / 0.76 / 0.76, its
# nuisance counterpart 0.52-0.54 (docs/explanations.md); the old absolute-logit metric was 0.15-0.18.
ACC_FLOOR = 0.65  # ~3.4 points below the minimum 68.4 %
GAIN_OVER_ZERO_SHOT = 5.0  # issue 21: SToRI >= zero-shot + 5 points; measured +22.6..+24.5
DISCRIMINATIVE_SHARE_TARGET = 1.5  # issue 14's target; measured minimum 1.99
PRECISION_AT_3_REACHED = 0.5  # issue 14 asks 0.6; measured minimum 0.542
SIGN_AGREEMENT_REACHED = 0.70  # issue 22 asks 0.9 (not reached); measured minimum 0.76
NUISANCE_BELOW = 0.60  # issue 22's target (met); measured maximum 0.54


def test_demo_config_uses_the_toy_world():
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert cfg["model"]["init_args"]["clip_model"] == "stori-toy"
    assert cfg["model"]["init_args"]["pretrained"] == "builtin"
    assert cfg["data"]["class_path"] == "stori_pl.toy.data.ToyShapes"
    # the paper's start block (7 of the toy CLIP's 12 text blocks), function words kept at weight 1
    assert cfg["model"]["init_args"]["start_block"] == 7 and cfg["model"]["init_args"]["freeze_function_words"] is True
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


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One full run of the demo as shipped (configs/demo.yaml, 60 epochs): ``(run folder, stdout)``.

    Shared by every test below, so the demo trains once (about a minute on one CPU thread).
    """
    import torch

    from stori_pl.cli import main

    if not WEIGHTS.is_file():
        pytest.skip("shipped stori-toy weights missing")
    tmp = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("STORI_CACHE", str(tmp / "cache"))
        import contextlib
        import io

        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                rc = main(["fit", "--config", str(REPO / "configs" / "demo.yaml")])
        finally:
            torch.set_num_threads(threads)
    assert rc == 0
    runs = sorted((tmp / "runs" / "demo").glob("version_*"))
    assert runs, "the demo wrote no run folder"
    return runs[-1], out.getvalue(), tmp


@pytest.fixture(scope="module")
def demo_metrics(demo_run):
    """``stori explain-eval`` of the demo's last.ckpt (test images of the demo's own data folder)."""
    import contextlib
    import io

    from stori_pl.cli.explain_eval import explain_eval

    run, _, tmp = demo_run
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORI_CACHE", str(tmp / "cache"))
        result = explain_eval(run / "checkpoints" / "last.ckpt", json=tmp / "metrics.json", data_root=tmp / "data")
    return result, out.getvalue()


@pytest.mark.slow
def test_demo_fit_prints_zero_shot_vs_stori(demo_run):
    run, out, tmp = demo_run
    assert "zero-shot (same prompts, all weights 1)" in out and "SToRI" in out
    assert (tmp / "data" / "toy_shapes" / "split_zhou_ToyShapes.json").is_file()
    acc = json.loads((run / "test_results.json").read_text())["metrics"]["test/acc"]
    # measured over few-shot seeds 1-3 with the shipped settings: see docs/explanations.md
    assert acc > ACC_FLOOR
    # the printed figures are the written ones; zero-shot of the same prompts measured 45.8 % on seeds 1-3
    zero, stori = map(float, re.search(r"weights 1\): ([\d.]+)%  →  SToRI: ([\d.]+)%", out).groups())
    assert stori == pytest.approx(100 * acc, abs=0.05)
    assert 40.0 <= zero and 100 * acc >= zero + GAIN_OVER_ZERO_SHOT, (zero, acc)
    assert re.search(r"tested: checkpoint best-epoch\d+-acc[\d.]+\.ckpt\)", out)  # the line names what it tests


@pytest.mark.slow
def test_demo_explanations_are_readable(demo_metrics):
    result, out = demo_metrics
    s = result.summary
    for name in ("discriminative_share", "precision_at_3", "sink_share", "sign_agreement"):
        assert name in out  # printed by name, with its value
    # targets of issue 14 and what the shipped demo reaches (docs/explanations.md, 3 seeds)
    assert s["discriminative_share"] > DISCRIMINATIVE_SHARE_TARGET
    assert s["precision_at_k"] >= PRECISION_AT_3_REACHED
    assert s["sink_share"] < s["sink_share_uniform"]  # training moved weight off function words and nuisances
    assert s["sign_agreement"] >= SIGN_AGREEMENT_REACHED and s["sign_agreement_nuisance"] <= NUISANCE_BELOW
    assert s["sign_agreement"] > s["sign_agreement_nuisance"] + 0.1  # defining words separate from nuisances
    assert set(result.per_class) == set(json.loads(json.dumps(result.to_dict()))["per_class"])


@pytest.mark.slow
def test_demo_discriminative_share_does_not_regress(demo_metrics):
    """Guard: a trained demo model must put clearly more weight on class-defining words than zero-shot."""
    assert demo_metrics[0].summary["discriminative_share"] >= 1.2


@pytest.mark.slow
def test_demo_summaries_name_class_defining_words(demo_run):
    """Per prompt, the word SToRI weights most (function words aside) is one of the class's defining words in
    63 / 68 / 66 % of the 384 prompts (few-shot seeds 1-3, epoch 30) against 50 % for a uniform pick. (The
    vocabulary-wide "most emphasized" summary, a geometric mean over every occurrence, is empty at block 7:
    a defining word of one class is crushed in the prompts of the classes it does not define.)"""
    from stori_pl.interpret import viz
    from stori_pl.text.function_words import is_function_word
    from stori_pl.interpret.metrics import defining_words
    from stori_pl.lightning.callbacks import weights_from_json
    from stori_pl.toy import TOY_GROUND_TRUTH

    run, _, _ = demo_run
    weights = weights_from_json(sorted((run / "weights").glob("epoch_*.json"))[-1])
    defining = defining_words(list(weights), TOY_GROUND_TRUTH)
    tops = [max(((w, v) for w, v in words if not is_function_word(w)), key=lambda t: t[1])[0] in defining[cls]
            for cls, prompts in weights.items() for words in prompts]
    assert sum(tops) / len(tops) >= 0.58, sum(tops) / len(tops)
    up, _ = viz.top_words(weights, 10, min_count=2)  # what `stori explain` prints as "most emphasized"
    assert not any(is_function_word(w) for w, _, _ in up)
    # Per class (explain's "emphasized:" line, over the class's prompts): a defining word for 0.54 / 0.67 / 0.69 /
    # 0.65 / 0.66 of the classes (tools/explain_sweep.py, seeds 1-5) and 0.60 for the demo run; asserted 0.45, a
    # bit over 1.5 sd below the minimum. Scored over occurrences (the summary before session 6) the same weights
    # name one for 0.29-0.35: the class summary is what makes the difference.
    def class_share(over):
        firsts = {c: viz.top_words({c: p}, 1, over=over)[0] for c, p in weights.items()}
        return sum(bool(f) and f[0][0] in defining[c] for c, f in firsts.items()) / len(weights)

    over_prompts, over_occurrences = class_share("prompts"), class_share("occurrences")
    assert over_prompts >= 0.45 and over_prompts >= over_occurrences + 0.1, (over_prompts, over_occurrences)


@pytest.mark.slow
def test_demo_logs_explanation_metrics_to_tensorboard(demo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = demo_run
    events = EventAccumulator(str(run)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"explain/discriminative_share", "explain/precision_at_k", "explain/sink_share", "explain/sign_agreement"} <= tags
    n_val = len(events.Scalars("val/acc"))
    assert len(events.Scalars("explain/discriminative_share")) == n_val  # every validation epoch


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
