"""WeightPlotCallback: TensorBoard images / histogram / text (read back with EventAccumulator) and JSON."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stori_pl.interpret import viz
from stori_pl.lightning.callbacks import (
    WeightPlotCallback,
    export_weights_json,
    movement,
    trainable_log_weights,
    weights_from_json,
)

WORDS = ["a", "photo", "of", "a", "fluffy", "dog"]
DOG = [("a", 1.0), ("fluffy", 6.0), ("dog", 2.0), ("with", 0.5), ("floppy", 1.0), ("ears", 1.5), (".", 0.2)]


class FakeStori(L.LightningModule):
    """Four classes x two prompts with one trainable log-weight per word; training pushes class 2's 'fluffy'."""

    classnames = ["cat", "dog", "car", "tree"]

    def __init__(self) -> None:
        super().__init__()
        self.log_weights = torch.nn.Parameter(torch.zeros(8, len(WORDS)))  # [P, N]

    def word_weights(self):
        w = self.log_weights.detach().softmax(-1)  # [P, N], sums to 1 per prompt
        return {c: [list(zip(WORDS, w[2 * i + j].tolist())) for j in range(2)] for i, c in enumerate(self.classnames)}

    def training_step(self, batch, batch_idx):
        return -self.log_weights[4:6, 4].sum()  # class "car" emphasizes "fluffy"

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.log_weights.sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=2)


def _fit(tmp_path, module, callback, logger, epochs=2):
    trainer = L.Trainer(
        max_epochs=epochs, default_root_dir=tmp_path, logger=logger, callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=1, accelerator="cpu", devices=1,
    )
    trainer.fit(module)
    return trainer


def test_tensorboard_images_histogram_text_and_json(tmp_path):
    cb = WeightPlotCallback(num_fixed=1, num_moved=1)
    trainer = _fit(tmp_path, FakeStori(), cb, TensorBoardLogger(tmp_path, name="tb"))
    run_dir = trainer.log_dir
    acc = EventAccumulator(run_dir, size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    # fixed class "cat" (first) + the class that moved most ("car")
    assert {"word_weights/cat", "word_weights/car"} <= set(tags["images"]), tags["images"]
    assert "word_weights/dog" not in tags["images"]
    assert len(acc.Images("word_weights/car")) == 2  # one per validation epoch, not the sanity check
    img = acc.Images("word_weights/car")[-1]
    assert img.width > 300 and img.height > 100
    assert "log_weights" in tags["histograms"]
    assert acc.Histograms("log_weights")[-1].histogram_value.num == 48  # every trainable log-weight
    assert "top_words/text_summary" in tags["tensors"]
    text = acc.Tensors("top_words/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| car | fluffy ×" in text

    files = sorted(p.name for p in (tmp_path / "tb" / "version_0" / "weights").iterdir())
    assert files == ["epoch_000.json", "epoch_001.json", "latest.html"]
    data = json.loads((tmp_path / "tb" / "version_0" / "weights" / "epoch_001.json").read_text())
    assert list(data) == FakeStori.classnames
    for prompts in data.values():
        assert len(prompts) == 2
        for pairs in prompts.values():
            assert [w for w, _ in pairs] == WORDS
            assert sum(v for _, v in pairs) == pytest.approx(1.0, abs=1e-4)
    car = next(iter(data["car"].values()))
    assert max(car, key=lambda p: p[1])[0] == "fluffy"


def test_without_logger_only_json(tmp_path):
    cb = WeightPlotCallback(classes=["dog"])
    _fit(tmp_path, FakeStori(), cb, logger=False, epochs=1)
    assert cb.last_written == tmp_path / "weights" / "epoch_000.json"
    assert json.loads(cb.last_written.read_text())["dog"]
    assert not list(tmp_path.rglob("events.out.tfevents*"))


def test_csv_logger_and_every_n_epochs(tmp_path):
    cb = WeightPlotCallback(every_n_epochs=2, write_html=False)
    trainer = _fit(tmp_path, FakeStori(), cb, CSVLogger(tmp_path), epochs=3)
    names = sorted(p.name for p in (tmp_path / "lightning_logs" / "version_0" / "weights").iterdir())
    assert names == ["epoch_001.json", "epoch_002.json"]  # epoch 2 (index 1) and the last one
    assert trainer.log_dir.endswith("version_0")


def test_unknown_classes_fail_at_fit_start(tmp_path):
    module = FakeStori()
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['dgo'\].*'dog'"):
        WeightPlotCallback(classes=["dgo"]).select_classes(module.word_weights())
    with pytest.raises(ValueError, match="unknown class"):
        _fit(tmp_path, module, WeightPlotCallback(classes=["dgo"]), logger=False, epochs=1)
    assert torch.all(module.log_weights == 0)  # failed before any training step


def test_movement_and_histogram_fallback():
    module = FakeStori()
    with torch.no_grad():
        module.log_weights[2, 0] = 3.0  # class "dog", first prompt
    moved = movement(module.word_weights())
    assert max(moved, key=moved.get) == "dog" and moved["cat"] == pytest.approx(0.0, abs=1e-6)
    assert trainable_log_weights(module).shape == (48,)


class FeatureData(L.LightningDataModule):
    """Random unit image features for a tiny StoriClassifier (no files)."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = torch.nn.functional.normalize(torch.randn(16, dim, generator=g), dim=-1)  # [N, D]
        self.labels = torch.arange(16) % n_classes  # [N]

    def _loader(self):
        items = [{"features": f, "label": y} for f, y in zip(self.features, self.labels)]
        return torch.utils.data.DataLoader(items, batch_size=8)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()


def test_tiny_stori_classifier_fit(tmp_path, tiny_clip):
    from stori_pl.models.stori import StoriClassifier

    prompts = {
        "classnames": ["dog", "cat", "car"],
        "base": [["a photo of a dog."], ["a photo of a cat."], ["a photo of a car."]],
        "cupl": [["a fluffy dog with floppy ears.", "a loyal hound"], ["a small cat with whiskers."], ["a red sports car"]],
    }
    model = StoriClassifier(clip_model="stori-tiny", pretrained=None, start_block=2, lr=0.5, prompts=prompts)
    cb = WeightPlotCallback(classes=["cat", "car"])
    trainer = L.Trainer(
        max_epochs=2, default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path, name="tb"), callbacks=[cb],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(model, datamodule=FeatureData(model.clip.visual.output_dim, 3))
    acc = EventAccumulator(trainer.log_dir, size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert {"word_weights/cat", "word_weights/car"} == {t for t in acc.Tags()["images"]}
    n_trainable = int(model.weight_mask.sum())
    assert acc.Histograms("log_weights")[-1].histogram_value.num == n_trainable
    data = json.loads(cb.last_written.read_text())
    assert cb.last_written.name == "epoch_001.json"
    assert list(data) == ["dog", "cat", "car"]
    assert list(data["dog"]) == ["a fluffy dog with floppy ears.", "a loyal hound"]
    for prompts_ in data.values():
        for pairs in prompts_.values():
            assert sum(v for _, v in pairs) == pytest.approx(1.0, abs=1e-4)
    moved = [v for pairs in data["dog"].values() for _, v in pairs]
    assert max(moved) - min(moved) > 1e-3  # training changed the weights


def test_json_round_trip_sums_to_one(tmp_path):
    classes = {"dog": [viz.normalize_prompt(DOG), viz.normalize_prompt(DOG)], "cat": [[("a", 1.0)]]}
    path = tmp_path / "weights" / "epoch_000.json"
    export_weights_json(path, classes)
    raw = json.loads(path.read_text())
    assert set(raw) == {"dog", "cat"}
    assert list(raw["dog"]) == ["a fluffy dog with floppy ears.", "a fluffy dog with floppy ears. #2"]
    back = weights_from_json(path)
    assert len(back["dog"]) == 2
    for prompts in back.values():
        for p in prompts:
            assert sum(v for _, v in p) == pytest.approx(1.0, abs=1e-5)
    assert [w for w, _ in back["dog"][0]] == [w for w, _ in DOG]
