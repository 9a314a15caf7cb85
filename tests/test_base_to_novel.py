"""CoCoOp's base-to-novel protocol: models that handle new classes, `stori fit` on the base classes testing the new
ones too, `stori report --base_to_novel true`, and the `stori attributes` command."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from stori_pl.cli import main
from stori_pl.cli.report import base_to_novel_rows, load_base_to_novel
from stori_pl.lightning.results import harmonic_mean
from stori_pl.data import PromptSet
from stori_pl.models import (
    CoOp,
    LinearProbe,
    StoriClassifier,
    TaskRes,
    TipAdapter,
    ZeroShotCLIP,
)
from stori_pl.toy import data as toy

BASE = PromptSet(["red car", "blue bird"], [["a photo of a red car."], ["a photo of a blue bird."]],
                 [["a red car."], ["a blue bird."]])
NEW = PromptSet(["green tree", "gray cat", "big dog"], [["a photo of a green tree."], ["a photo of a gray cat."],
                                                        ["a photo of a big dog."]],
                [["a green tree."], ["a gray cat."], ["a big dog."]])


def test_coop_keeps_its_context_on_new_classes(tiny_clip):
    model = CoOp(clip_model="stori-tiny", pretrained=None, n_ctx=4, prompts=BASE.to_dict())
    with torch.no_grad():
        model.ctx.normal_()  # "learned" on the base classes
    learned = model.ctx.detach().clone()
    model.use_classes(NEW)
    assert model.classnames == NEW.classnames and torch.equal(model.ctx, learned)
    direct = CoOp(clip_model="stori-tiny", pretrained=None, n_ctx=4, prompts=NEW.to_dict())
    with torch.no_grad():
        direct.ctx.copy_(learned)
    assert torch.allclose(model.eval_class_embeddings(), direct.eval_class_embeddings(), atol=1e-6)
    assert model.metrics["test_"]["test/acc"].num_classes == 3


def test_zero_shot_rebuilds_for_new_classes(tiny_clip):
    model = ZeroShotCLIP(clip_model="stori-tiny", pretrained=None, prompts=BASE.to_dict())
    model.use_classes(NEW)
    direct = ZeroShotCLIP(clip_model="stori-tiny", pretrained=None, prompts=NEW.to_dict())
    assert torch.allclose(model.class_embeddings(), direct.class_embeddings())


@pytest.mark.parametrize("cls, name", [(StoriClassifier, "SToRI"), (TaskRes, "TaskRes"), (TipAdapter, "Tip-Adapter"),
                                       (LinearProbe, "Linear probe")])
def test_per_class_methods_refuse_new_classes(cls, name):
    model = cls(clip_model="stori-tiny", pretrained=None)
    assert not model.supports_new_classes
    model.trainer = SimpleNamespace(datamodule=SimpleNamespace(subsample_classes="new"))
    with pytest.raises(ValueError, match=f"{name}.* learns per-class parameters and cannot classify new classes; "
                                         "use --data.subsample_classes base or all"):
        model.setup("test")
    with pytest.raises(ValueError, match="cannot classify new classes"):
        model.use_classes(NEW)


def test_report_harmonic_mean_of_mean_accuracies(tmp_path):
    runs = {1: (0.8, 0.6), 2: (0.6, 0.4)}
    for seed, (b, n) in runs.items():
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "test_results.json").write_text(json.dumps({
            "method": "CoOp", "method_name": "CoOp", "dataset": "DTD", "shots": 16, "seed": seed,
            "subsample_classes": "base", "metrics": {"test/acc": b}, "base_acc": b, "new_acc": n}))
    (row,) = base_to_novel_rows(load_base_to_novel(sorted(tmp_path.rglob("*.json"))))
    assert row["base"] == pytest.approx((70.0, 14.142135), rel=1e-5)
    assert row["new"][0] == pytest.approx(50.0) and row["n"] == 2
    assert row["hm"][0] == pytest.approx(2 * 70 * 50 / 120)  # CoCoOp: HM of the mean base and new accuracy
    assert harmonic_mean(0.0, 0.0) == 0.0


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """Zero-shot CLIP (seed 1) and CoOp (2 epochs, seeds 1 and 2) on the toy base classes, as `stori fit/test` do."""
    work = tmp_path_factory.mktemp("b2n")
    mp = pytest.MonkeyPatch()
    mp.setenv("STORI_CACHE", str(work / "cache"))
    mp.chdir(work)
    toy.write_toy_shapes(work / "data", n_train=2, n_val=1, n_test=3)
    common = ["--data.root", str(work / "data"), "--data.subsample_classes", "base", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(work / "runs"),
              "--data.augment_views", "0"]
    assert main(["test", "--config", "zero_shot/toy_shapes_1shot.yaml", *common]) == 0
    for seed in (1, 2):
        assert main(["fit", "--config", "coop/toy_shapes_1shot.yaml", "--trainer.max_epochs", "2",
                     "--data.seed", str(seed), "--seed_everything", str(seed), *common]) == 0
    yield work
    mp.undo()


def test_fit_on_base_classes_tests_new_ones_too(toy_runs, capsys):
    results = {p: json.loads(p.read_text()) for p in (toy_runs / "runs").rglob("test_results.json")}
    assert len(results) == 3
    for r in results.values():
        assert r["subsample_classes"] == "base" and r["metrics"]["test/acc"] == r["base_acc"]
        assert r["hm"] == pytest.approx(harmonic_mean(r["base_acc"], r["new_acc"]))
        assert set(r["metrics_new"]) == set(r["metrics"]) and r["metrics_new"]["test/acc"] == r["new_acc"]
    # the new-class accuracy of a fit is what `stori test` on the new classes gives for its final checkpoint
    coop_run = next(p.parent for p, r in results.items() if r["method"] == "CoOp" and r["seed"] == 1)
    ckpt = coop_run / "checkpoints" / "last.ckpt"
    assert main(["test", "--config", "coop/toy_shapes_1shot.yaml", "--ckpt_path", str(ckpt),
                 "--data.root", str(toy_runs / "data"), "--data.subsample_classes", "new", "--data.augment_views", "0",
                 "--trainer.enable_progress_bar", "false",
                 "--trainer.logger.init_args.save_dir", str(toy_runs / "alone")]) == 0
    (alone,) = [json.loads(p.read_text()) for p in (toy_runs / "alone").rglob("test_results.json")]
    assert alone["subsample_classes"] == "new" and "new_acc" not in alone
    assert alone["metrics"]["test/acc"] == pytest.approx(results[coop_run / "test_results.json"]["new_acc"])
    capsys.readouterr()
    # and the report: one row per method with base, new and HM over the seeds
    assert main(["report", str(toy_runs / "runs"), "--base_to_novel", "true", "--csv", str(toy_runs / "b2n.csv")]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()[2:]}
    assert set(rows) == {"CoOp", "Zero-shot CLIP"}
    assert rows["CoOp"].rstrip().endswith("| 2 |") and rows["Zero-shot CLIP"].rstrip().endswith("| 1 |")
    coop = [r for r in results.values() if r["method"] == "CoOp"]
    base = sum(100 * r["base_acc"] for r in coop) / 2
    assert f"{base:.1f}±" in rows["CoOp"]
    assert (toy_runs / "b2n.csv").read_text().startswith("method,shots,dataset,base_mean")
    # the plain report keeps base-class runs apart from full-dataset ones
    assert main(["report", str(toy_runs / "runs")]) == 0
    assert "ToyShapes (base)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- stori attributes
def test_attributes_command_writes_and_prints(toy_runs, capsys):
    args = ["attributes", "--config", "coop/toy_shapes_1shot.yaml", "--data.root", str(toy_runs / "data")]
    assert main([*args, "--labeller", "toy", "--attribute", "background", "--parts+", "test",
                 "--output", str(toy_runs / "bg.json")]) == 0
    out = capsys.readouterr().out
    labels = json.loads((toy_runs / "bg.json").read_text())["labels"]
    assert len(labels) == len(toy.TOY_CLASSES) * (1 + 3) and f"written to {toy_runs / 'bg.json'}" in out
    assert "different words:" in out and set(labels.values()) <= {"white", "black", "gray"}


@pytest.mark.parametrize("extra, message", [
    (["--labeller", "clip", "--question", "what? {}"], "--question is an option of the blip2 labeller, not of clip"),
    (["--labeller", "file"], "the file labeller needs --file CSV"),
    (["--labeller", "file", "--file", "missing.csv"], "attribute CSV not found: missing.csv"),
    (["--labeller", "toy", "--attribute", "weight"], "unknown toy attribute 'weight'"),
])
def test_attributes_command_bad_input_is_one_line(toy_runs, capsys, extra, message):
    args = ["attributes", "--config", "coop/toy_shapes_1shot.yaml", "--data.root", str(toy_runs / "data")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stori attributes: error: ") and message in err[-1]
