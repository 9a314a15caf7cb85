"""`stori fit --trainer.devices 2 --trainer.strategy ddp` on CPU (gloo): the user's multi-GPU path, tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

pytestmark = pytest.mark.slow


class RankProbe(L.Callback):
    """Each rank writes what it saw to ``$STORI_PROBE_DIR/rank<r>.json`` (used only by this test).

    The CLI builds it in every DDP process before ``prepare_data``; it then wraps the feature cache's
    ``encode_batch`` in its process to count the image batches that process encoded.
    """

    def __init__(self) -> None:
        import stori_pl.data.features as features

        self.val_acc: list[float] = []
        self.val_seen = 0
        self.encode_calls = 0
        original = features.encode_batch

        def counting(model, images, device):
            self.encode_calls += 1
            return original(model, images, device)

        features.encode_batch = counting  # this subprocess only: it exits after the run

    def on_validation_epoch_start(self, trainer, pl_module):
        self.val_seen = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val_seen += len(batch["label"])

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_acc.append(float(trainer.callback_metrics["val/acc"]))

    def on_fit_end(self, trainer, pl_module):
        out = Path(os.environ["STORI_PROBE_DIR"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({
            "world_size": trainer.world_size,
            "log_weights": pl_module.log_weights.detach().cpu().tolist(),
            "val_acc": self.val_acc,
            "val_seen": self.val_seen,  # in the last validation epoch
            "encode_calls": self.encode_calls,
        }))


def test_two_process_ddp_on_cpu(tmp_path):
    from fakedata import make_fake

    fake = make_fake("dtd", tmp_path / "data")
    probe = tmp_path / "probe"
    probe.mkdir()
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "STORI_CACHE": str(tmp_path / "cache"), "STORI_PROBE_DIR": str(probe),
           "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stori_pl", "fit", "--model", "StoriClassifier", "--model.clip_model", "stori-tiny",
           "--model.pretrained", "null", "--model.start_block", "3", "--model.lr", "0.5",
           "--data", "DTD", "--data.root", str(fake.root), "--data.cupl", str(fake.cupl), "--data.shots", "4",
           "--data.batch_size", "4", "--data.num_workers", "0",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
           "--trainer.callbacks+=test_ddp.RankProbe", "--test_after_fit", "false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["log_weights"] == r1["log_weights"]  # gradients all-reduced: identical weights
    assert any(abs(x) > 0 for row in r0["log_weights"] for x in row)
    assert r0["val_seen"] + r1["val_seen"] == 6 and r0["val_seen"] == 3  # val split across ranks ...
    assert r0["val_acc"] == r1["val_acc"]  # ... and the accuracy synced over both halves
    assert r1["encode_calls"] == 0 and r0["encode_calls"] > 0  # features encoded once (rank 0), then cached
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 3  # train, val, test: one cache file each
    assert (tmp_path / "runs" / "stori" / "version_0" / "checkpoints" / "last.ckpt").is_file()
