"""`stori fit --ckpt_path last` ends where an uninterrupted fit ends; the same seed gives the same weights."""

from __future__ import annotations

import json
import warnings

import lightning as L
import pytest
import torch
from fakedata import make_fake

from stori_pl.cli import main

pytestmark = pytest.mark.slow


class StopAfter(L.Callback):
    """Simulates an interruption: stop cleanly after ``epochs`` epochs (last.ckpt is written)."""

    def __init__(self, epochs: int = 2):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    fake = make_fake("dtd", root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORI_CACHE", str(root / "cache"))
        mp.chdir(root)

        def fit(name: str, *extra: str) -> dict:
            argv = ["fit", "--model", "StoriClassifier", "--model.clip_model", "stori-tiny",
                    "--model.pretrained", "null", "--model.start_block", "3", "--model.lr", "0.5",
                    "--data", "DTD", "--data.root", str(fake.root), "--data.cupl", str(fake.cupl),
                    "--data.shots", "4", "--data.batch_size", "4", "--data.num_workers", "0",
                    "--seed_everything", "7", "--trainer.max_epochs", "4", "--trainer.accelerator", "cpu",
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                    "--trainer.logger.init_args.name", name, "--test_after_fit", "false", *extra]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert main(argv) == 0
            return torch.load(root / "runs" / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)

        yield fit, root


def test_resume_last_equals_uninterrupted_and_seed_reproduces(runner):
    fit, root = runner
    full = fit("full")
    assert full["global_step"] == 12  # 3 batches of 4 images x 4 epochs: shuffling matters

    stop = json.dumps({"class_path": "test_resume.StopAfter", "init_args": {"epochs": 2}})
    half = fit("cut", f"--trainer.callbacks+={stop}")
    assert half["global_step"] == 6
    resumed = fit("cut", "--ckpt_path", "last")
    assert not (root / "runs" / "cut" / "version_1").exists()  # resumed in place, same TensorBoard run
    assert resumed["global_step"] == 12
    assert not torch.equal(half["state_dict"]["log_weights"], resumed["state_dict"]["log_weights"])
    torch.testing.assert_close(resumed["state_dict"]["log_weights"], full["state_dict"]["log_weights"],
                               rtol=1e-6, atol=1e-7)

    again = fit("again")
    assert torch.equal(again["state_dict"]["log_weights"], full["state_dict"]["log_weights"])
    assert full["state_dict"]["log_weights"].abs().sum() > 0
