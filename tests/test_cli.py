"""`stori fit/test/predict/report` end to end, in-process, on fake DTD data and the tiny random CLIP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from fakedata import make_fake

from stori_pl.cli import main

REPO = Path(__file__).resolve().parents[1]
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
    return work / "runs" / "stori" / "dtd_2shot" / "version_0"


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
    # the paper configs test the weights after the last epoch (Dassl's protocol), not the val-selected checkpoint
    assert result["test_ckpt"] == "last" and result["ckpt_path"] is None and result["wall_time_s"] > 0
    assert "test_ckpt: last" in config
    ckpt = torch.load(best[0], weights_only=True)
    assert list(ckpt["state_dict"]) == ["log_weights"] and ckpt["stori"]["prompts"]["classnames"] == [
        "banded", "blotchy", "braided"]
    assert list((run / "weights").glob("epoch_*.json"))  # the weight-plot callback is on by default


def test_test_ckpt_best_tests_the_val_selected_checkpoint(env):
    fake, work = env
    argv = ["fit", "--config", "dtd_2shot.yaml", *TINY, "--model.start_block", "3", *data_args(fake), *QUIET,
            "--trainer.max_epochs", "2", "--test_ckpt", "best", "--trainer.logger.init_args.name", "best_run"]
    assert main(argv) == 0
    run = work / "runs" / "best_run" / "version_0"
    result = json.loads((run / "test_results.json").read_text())
    best = list((run / "checkpoints").glob("best-*.ckpt"))
    assert result["test_ckpt"] == "best" and Path(result["ckpt_path"]).name == best[0].name


def test_model_of_another_method_is_refused(env, capsys):
    fake, _ = env
    assert main(["fit", "--config", "coop/dtd_2shot.yaml", "--model", "StoriClassifier", *data_args(fake)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "coop/dtd_2shot.yaml is written for CoOp" in err[0]


def test_config_name_resolution_reports_the_file(env, capsys):
    from stori_pl.cli.lightning_args import resolve_config

    path = resolve_config("dtd_16shot")
    assert Path(path).as_posix().endswith("configs/stori/dtd_16shot.yaml") and Path(path).is_file()  # SToRI's
    assert "using the shipped config" in capsys.readouterr().err
    assert Path(resolve_config("coop/dtd_16shot.yaml")).as_posix().endswith("configs/coop/dtd_16shot.yaml")
    assert Path(resolve_config("demo")).name == "demo.yaml"
    with pytest.raises(SystemExit, match="not found.*close: coop/dtd_16shot.yaml"):
        resolve_config("copo/dtd_16shot.yaml")


def test_test_and_predict_from_checkpoint(fitted, env):
    fake, work = env
    best = next((fitted / "checkpoints").glob("best-*.ckpt"))
    last = fitted / "checkpoints" / "last.ckpt"  # the weights after the last epoch, which fit tested
    argv = ["test", "--config", "dtd_2shot.yaml", *TINY, "--model.start_block", "3", *data_args(fake), *QUIET,
            "--ckpt_path", str(last)]
    assert main(argv) == 0
    again = json.loads((work / "runs" / "stori" / "dtd_2shot" / "version_1" / "test_results.json").read_text())
    first = json.loads((fitted / "test_results.json").read_text())
    assert again["metrics"]["test/acc"] == pytest.approx(first["metrics"]["test/acc"])
    assert again["test_ckpt"] == "given" and Path(again["ckpt_path"]) == last

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
    assert main(["fit", "--model", "Stori", "--data", "DTD"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stori fit: error: unknown model 'Stori'") and "StoriClassifier, ZeroShotCLIP, TaskRes" in err
    assert main(["fit", "--model", "StoriClassifier", "--data", "dtd"]) == 2
    assert "stori fit: error: unknown data 'dtd'" in capsys.readouterr().err

    import stori_pl.text.clip

    def no_model(*a, **k):
        raise AssertionError("CLIP loaded before the data was checked")

    import stori_pl.models  # noqa: F401  (its modules import load_clip by name: patch them too)
    from conftest import patch_load_clip

    patch_load_clip(monkeypatch, no_model)
    argv = ["fit", "--model", "StoriClassifier", *TINY, "--data", "DTD", "--data.root", "/nonexistent/data", *QUIET]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "stori fit: error: data root not found: /nonexistent/data" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="/nonexistent/data"):  # --traceback: the exception itself
        main([*argv, "--traceback"])
    monkeypatch.setenv("STORI_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="/nonexistent/data"):
        main(argv)


def run_stori(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m stori_pl.cli ARGS`` in a fresh process, with this checkout first on the path."""
    environ = {k: v for k, v in os.environ.items() if k != "STORI_DEBUG"}
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "stori_pl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**environ, **env}, timeout=900)


def error_lines(stderr: str, command: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"stori {command}: error: ")]


@pytest.mark.slow
def test_user_errors_are_one_line_with_status_2(env, tmp_path):
    """A user error (utility command and `stori fit`) ends with one line naming it, exit 2, no traceback;
    --traceback / STORI_DEBUG=1 show the traceback (exit 1)."""
    fake, work = env
    missing = tmp_path / "no_such_run"
    r = run_stori("report", str(missing), cwd=work)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert error_lines(r.stderr, "report") == [f"stori report: error: {missing}: no such run folder or results file"]
    r = run_stori("report", "--traceback", str(missing), cwd=work)
    assert r.returncode == 1 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr

    r = run_stori("fit", "--config", "dtd_2shot.yaml", *TINY, "--data.root", "/nonexistent/data",
                  "--data.cupl", str(fake.cupl), *QUIET, cwd=work)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = error_lines(r.stderr, "fit")
    assert "data root not found: /nonexistent/data" in line


def test_bugs_keep_their_traceback(monkeypatch, capsys):
    """Not a user error: the exception propagates (the console script prints its traceback, exit 1)."""
    import stori_pl.cli.report as report_cmd

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(report_cmd, "find_results", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["report", "runs"])

    def lookup(*args, **kwargs):
        return {}["shots"]  # a bare KeyError from a dict lookup is a bug, not a message

    monkeypatch.setattr(report_cmd, "find_results", lookup)
    with pytest.raises(KeyError):
        main(["report", "runs"])
    assert capsys.readouterr().err == ""


def test_unknown_command_and_usage(capsys):
    assert main(["frobnicate"]) == 2
    assert "stori: error: unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 0 and main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "fit " in out and "retrieval-eval " in out and "--traceback" in out


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
    assert capsys.readouterr().err == f"stori report: error: {tmp_path / 'nothing'}: no such run folder or results file\n"


def test_report_paired_difference_to_a_method(tmp_path, capsys):
    """Differences are paired by seed: CoOp is 2 points below SToRI on every seed, so its interval is [-2, -2]
    although both methods' own spreads (±2 points) overlap; a seed one method lacks is left out."""
    def result(method, name, seed, acc, shots=16):
        d = tmp_path / f"{method}{seed}_{shots}"
        d.mkdir(parents=True)
        (d / "test_results.json").write_text(json.dumps({
            "method": method, "method_name": name, "dataset": "DTD", "shots": shots, "seed": seed,
            "metrics": {"test/acc": acc}}))

    for seed, acc in ((1, 0.70), (2, 0.72), (3, 0.74)):
        result("StoriClassifier", "SToRI", seed, acc)
        result("CoOp", "CoOp", seed, acc - 0.02)
        result("TipAdapter", "Tip-Adapter", seed, (0.75, 0.70, 0.77)[seed - 1])
    result("CoOp", "CoOp", 4, 0.99)  # no SToRI run of seed 4: not paired
    result("CoOp", "CoOp", 1, 0.50, shots=4)  # no SToRI run at 4 shots: no row
    assert main(["report", str(tmp_path), "--paired_to", "SToRI", "--markdown", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert "| CoOp | 16 | DTD | -2.0 | [-2.0, -2.0] | 3 |" in out
    # Tip-Adapter - SToRI = +5, -2, +3: mean +2.0, sd 3.61, t(2) = 4.303 -> half width 8.97
    assert "| Tip-Adapter | 16 | DTD | +2.0 | [-7.0, +11.0] | 3 |" in out
    assert "| CoOp | 4 |" not in out.split("Paired difference")[1]
    assert "Paired difference to SToRI" in (tmp_path / "t.md").read_text()
    assert "appears twice" not in capsys.readouterr().err
    result("ZeroShotCLIP", "Zero-shot CLIP", 1, 0.6, shots=1)
    result("ZeroShotCLIP", "Zero-shot CLIP", 1, 0.6, shots=4)  # trained nothing: the same run per shots, no warning
    assert main(["report", str(tmp_path)]) == 0 and "appears twice" not in capsys.readouterr().err
    again = tmp_path / "CoOp2_16" / "again"  # another run of CoOp seed 2 with another value: named
    again.mkdir()
    (again / "test_results.json").write_text(json.dumps({"method": "CoOp", "method_name": "CoOp", "dataset": "DTD",
                                                         "shots": 16, "seed": 2, "metrics": {"test/acc": 0.1}}))
    assert main(["report", str(tmp_path)]) == 0 and "('CoOp', 16, 'DTD') seed 2 appears twice" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--paired_to", "SToRl"]) == 2
    assert "no such method in the results (methods: CoOp, SToRI, Tip-Adapter, Zero-shot CLIP)" in capsys.readouterr().err
