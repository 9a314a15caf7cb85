"""Helpers of the fault-injection tests of issue 20 (tests/test_faults_v2.py, tests/test_faults_runs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stori_pl.cli import main

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``stori`` in this process: (status, stdout, stderr)."""
    status = main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


def one_line_error(status: int, err: str, *needles: str) -> str:
    """Assert exit status 2 and a single ``stori <cmd>: error:`` line holding every needle; returns it."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert status == 2, err
    assert "Traceback" not in err and len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def fit_args(fake, name: str, *extra: str, epochs: int = 2) -> list[str]:
    """A seconds-long fit on fake DTD with the tiny random CLIP (tests/test_faults*.py)."""
    return ["fit", "--model", "StoriClassifier", "--model.clip_model", "stori-tiny", "--model.pretrained", "null",
            "--model.start_block", "3", "--model.lr", "0.5", "--data", "DTD", "--data.root", str(fake.root),
            "--data.cupl", str(fake.cupl), "--data.shots", "2", "--data.batch_size", "2", "--data.num_workers", "0",
            "--seed_everything", "7", "--trainer.max_epochs", str(epochs), "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.name", name, *extra]


def stori_process(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "import sys; from stori_pl.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
