"""`stori fit/test/predict/report` end to end, in-process, on fake DTD data and the tiny random CLIP."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from fakedata import make_fake

from stori_pl.cli import main

TINY = ["--model.clip_model", "stori-tiny", "--model.pretrained", "null"]
QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


def data_args(fake) -> list[str]:
    return ["--data.root", str(fake.root), "--data.cupl", str(fake.cupl), "--data.num_workers", "0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Fake DTD, a private feature cache, and a working folder that is not the repository."""
    root = tmp_path_factory.mktemp("cli")
    fake = make_fake("dtd", root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORI_CACHE", str(root / "cache"))
        work = root / "work"
        work.mkdir()
        mp.chdir(work)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield fake, work


@pytest.fixture(scope="module")
def fitted(env):
    """`stori fit --config dtd_2shot.yaml` (the shipped config, by name) with tiny overrides."""
    fake, work = env
    argv = ["fit", "--config", "dtd_2shot.yaml", *TINY, "--model.start_block", "3", *data_args(fake), *QUIET,
            "--trainer.max_epochs", "2", "--trainer.callbacks.every_n_epochs", "1"]
    assert main(argv) == 0
    return work / "runs" / "dtd_2shot" / "version_0"


def test_fit_uses_shipped_config_and_writes_run(fitted, capfd):
    run = fitted
    assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
    config = (run / "config.yaml").read_text()
    assert "lr: 0.05" in config and "start_block: 3" in config and "clip_model: stori-tiny" in config
    best = list((run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and (run / "checkpoints" / "last.ckpt").is_file()
    result = json.loads((run / "test_results.json").read_text())
    assert result["method"] == "StoriClassifier" and result["dataset"] == "DTD"
    assert (result["shots"], result["seed"]) == (2, 1)
    assert Path(result["ckpt_path"]).name == best[0].name  # tested the checkpoint selected on val
    assert 0 <= result["metrics"]["test/acc"] <= 1
    ckpt = torch.load(best[0], weights_only=True)
    assert list(ckpt["state_dict"]) == ["log_weights"] and ckpt["stori"]["prompts"]["classnames"] == [
        "banded", "blotchy", "braided"]
    assert list((run / "weights").glob("epoch_*.json"))  # the weight-plot callback is on by default


def test_config_name_resolution_reports_the_file(env, capsys):
    from stori_pl.lightning.cli import resolve_config

    path = resolve_config("dtd_16shot")
    assert Path(path).name == "dtd_16shot.yaml" and Path(path).is_file()
    assert "using the shipped config" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not found.*dtd_16shot.yaml"):
        resolve_config("no_such_config.yaml")


def test_test_and_predict_from_checkpoint(fitted, env):
    fake, work = env
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    argv = ["test", "--config", "dtd_2shot.yaml", *TINY, "--model.start_block", "3", *data_args(fake), *QUIET,
            "--ckpt_path", str(best)]
    assert main(argv) == 0
    again = json.loads((work / "runs" / "dtd_2shot" / "version_1" / "test_results.json").read_text())
    first = json.loads((fitted / "test_results.json").read_text())
    assert again["metrics"]["test/acc"] == pytest.approx(first["metrics"]["test/acc"])

    images = fake.dataset_dir / "images"
    out = work / "preds.csv"
    # no --model, no --config: the checkpoint says what it is
    argv = ["predict", "--ckpt_path", str(best), "--data", "ImageFolder", "--data.root", str(images),
            "--data.num_workers", "0", "--prediction_writer.output", str(out), "--prediction_writer.top_k", "2",
            *QUIET]
    assert main(argv) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["image", "top1", "prob1", "top2", "prob2"]
    assert len(rows) - 1 == len(list(images.rglob("*.jpg")))
    assert all(r[1] in ("banded", "blotchy", "braided") and 0 <= float(r[2]) <= 1 for r in rows[1:])
    assert all(float(r[2]) >= float(r[4]) for r in rows[1:])


def test_load_from_checkpoint_and_classify_images(fitted, env):
    from PIL import Image

    from stori_pl.models import StoriClassifier

    fake, _ = env
    model = StoriClassifier.load_from_checkpoint(fitted / "checkpoints" / "last.ckpt")
    paths = sorted((fake.dataset_dir / "images").rglob("*.jpg"))[:3]
    probs = model.classify([Image.open(p) for p in paths])
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(-1), torch.ones(3))
    assert model.classnames == fake.classnames


def test_zero_shot_baseline_and_report(fitted, env, capsys):
    fake, work = env
    argv = ["test", "--model", "ZeroShotCLIP", *TINY, "--data", "DTD", *data_args(fake), "--data.shots", "2",
            "--trainer.logger.init_args.name", "zeroshot", *QUIET]
    assert main(argv) == 0
    assert (work / "runs" / "zeroshot" / "version_0" / "test_results.json").is_file()
    capsys.readouterr()
    assert main(["report", "runs", "--csv", "table.csv", "--markdown", "table.md"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| Method | Shots | DTD | AVG |")
    assert "| SToRI | 2 |" in table and "| CuPL + templates | 0 |" in table
    rows = list(csv.DictReader(open("table.csv")))
    stori = next(r for r in rows if r["method"] == "SToRI")
    assert int(stori["DTD_n"]) == 1  # fit's own test; `stori test` of the same seed replaces, not adds
    assert (work / "table.md").read_text() == table


def test_bad_names_and_missing_data(env, monkeypatch, capsys):
    fake, _ = env
    with pytest.raises(SystemExit, match="unknown model 'Stori'.*StoriClassifier, ZeroShotCLIP, TaskRes"):
        main(["fit", "--model", "Stori", "--data", "DTD"])
    with pytest.raises(SystemExit, match="unknown data 'dtd'.*DTD"):
        main(["fit", "--model", "StoriClassifier", "--data", "dtd"])

    import stori_pl.text.clip

    def no_model(*a, **k):
        raise AssertionError("CLIP loaded before the data was checked")

    monkeypatch.setattr(stori_pl.text.clip, "load_clip", no_model)
    argv = ["fit", "--model", "StoriClassifier", *TINY, "--data", "DTD", "--data.root", "/nonexistent/data", *QUIET]
    with pytest.raises(FileNotFoundError, match="/nonexistent/data"):
        main(argv)


def test_report_mean_std_over_seeds(tmp_path, capsys):
    def result(run, method, dataset, shots, seed, acc):
        d = tmp_path / run
        d.mkdir(parents=True)
        (d / "test_results.json").write_text(json.dumps({
            "method": method, "method_name": {"StoriClassifier": "SToRI"}.get(method, method), "dataset": dataset,
            "shots": shots, "seed": seed, "metrics": {"test/acc": acc}}))

    for seed, acc in ((1, 0.70), (2, 0.72), (3, 0.74)):
        result(f"dtd{seed}", "StoriClassifier", "DTD", 16, seed, acc)
    result("in1", "StoriClassifier", "ImageNet", 16, 1, 0.80)
    result("in4", "StoriClassifier", "ImageNet", 4, 1, 0.75)
    assert main(["report", str(tmp_path), "--csv", str(tmp_path / "t.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Method | Shots | ImageNet | DTD | AVG |"
    assert lines[2] == "| SToRI | 4 | 75.0±0.0 | – | – |"  # AVG only over complete rows
    assert lines[3] == "| SToRI | 16 | 80.0±0.0 | 72.0±2.0 | 76.0 |"
    row = list(csv.DictReader(open(tmp_path / "t.csv")))[1]
    assert (row["DTD_mean"], row["DTD_std"], row["DTD_n"], row["avg"]) == ("72.0000", "2.0000", "3", "76.0000")
    assert main(["report", str(tmp_path / "nothing")]) == 2
