"""`stori explain CKPT`: terminal output (plain / colored), HTML, PNG, --image attributions, errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from stori_pl.cli import main as stori_main
from stori_pl.cli import run_command

PROMPTS = {
    "classnames": ["dog", "cat", "car"],
    "base": [["a photo of a dog."], ["a photo of a cat."], ["a photo of a car."]],
    "cupl": [["a fluffy dog with floppy ears.", "a loyal hound"], ["a small cat with whiskers."], ["a red sports car"]],
}


class _Data(L.LightningDataModule):
    def __init__(self, dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.items = [{"features": torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0), "label": i % 3}
                      for i in range(12)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.items, batch_size=6)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_clip):
    from stori_pl.models import StoriClassifier

    root = tmp_path_factory.mktemp("explain")
    model = StoriClassifier(clip_model="stori-tiny", pretrained=None, start_block=2, lr=0.5, prompts=PROMPTS)
    trainer = L.Trainer(max_epochs=2, default_root_dir=root, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, datamodule=_Data(model.clip.visual.output_dim))
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_plain_output_all_classes(ckpt, capsys):
    assert stori_main(["explain", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # not a TTY -> no colors
    for name in PROMPTS["classnames"]:
        assert f"== {name} ==" in out
    dog = out.split("== dog ==")[1].split("== cat ==")[0]
    assert "1. a" in dog and "fluffy" in dog and "2. a" in dog and "hound" in dog and "emphasized:" in dog
    assert "Most emphasized words across all classes" in out and "3 classes, 4 reweighted prompts" in out


def test_class_filter_color_and_html(ckpt, tmp_path, capsys):
    html = tmp_path / "w.html"
    png = tmp_path / "cat.png"
    assert stori_main(["explain", str(ckpt), "--classes+", "cat", "--color", "always", "--html", str(html),
                       "--png", str(png), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[1mcat\x1b[0m" in out and "dog" not in out.split("Most emphasized")[0].split("reweighted prompts")[1]
    text = html.read_text(encoding="utf-8")
    assert all(f"data-name='{n}'" in text for n in PROMPTS["classnames"])  # the page has all classes
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_image_attribution(ckpt, tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (48, 48), (30, 120, 200)).save(photo)
    out_png = tmp_path / "attr.png"
    assert stori_main(["explain", str(ckpt), "--image", str(photo), "--png", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert "predicted classes" in out and "%" in out
    assert "Word attributions" in out and "towards:" in out
    predicted = out.split("predicted classes\n")[1].split("\n")[0].split("%")[1].strip()
    assert f"== {predicted}  (log p " in out and "d log p(class) / d(word log-weight)" in out  # top class, default target
    assert out_png.exists()
    # an explicit class is explained instead of the top one; the raw logit is the other target
    assert stori_main(["explain", str(ckpt), "--image", str(photo), "--classes", "[car]", "--target", "logit"]) == 0
    out = capsys.readouterr().out
    assert "== car  (log p " in out and "d class logit / d(word log-weight)" in out


def test_absolute_weights_view(ckpt, capsys):
    """--absolute shows weights as they are (1 = unchanged) instead of relative to the prompt's average."""
    assert stori_main(["explain", str(ckpt), "--color", "never"]) == 0
    relative = capsys.readouterr().out
    assert stori_main(["explain", str(ckpt), "--color", "never", "--absolute", "true"]) == 0
    absolute = capsys.readouterr().out
    assert "1 = unchanged by training" in absolute and "1 = unchanged" not in relative
    assert "absolute weight, geometric mean" in absolute and "weight / prompt average" in relative


def test_errors(ckpt, tmp_path, capsys):
    def error(*argv: str) -> str:
        assert stori_main(["explain", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("stori explain: error: ") and "Traceback" not in err
        return err

    assert "unknown class 'Dgo' (did you mean: dog)" in error(str(ckpt), "--classes+", "Dgo")
    assert "not found" in error(str(tmp_path / "missing.ckpt"))
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}}, bad)
    assert "bad.ckpt is not a stori-pl checkpoint (no 'stori' entry" in error(str(bad))
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    assert f"not a readable stori-pl checkpoint (truncated or corrupt): {empty} (" in error(str(empty))
    assert "cannot read image" in error(str(ckpt), "--image", str(tmp_path / "nope.jpg"))
    assert "--top must be >= 1" in error(str(ckpt), "--top", "0")
    with pytest.raises(ValueError, match="unknown class"):  # the command module itself raises; `stori` reports
        run_command("explain", [str(ckpt), "--classes+", "Dgo"])


@pytest.mark.slow
def test_contrast_view_fit_two_classes_then_explain(tmp_path, monkeypatch, capsys, tiny_clip):
    """`stori fit` on a two-class subset (paper Fig. 3) writes weights for exactly those classes."""
    import json

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    pair = ["striped red circle", "dotted red circle"]
    rc = stori_main([
        "fit", "--model", "StoriClassifier", "--model.clip_model", "stori-tiny", "--model.pretrained", "null",
        "--model.start_block", "2", "--data", "stori_pl.toy.data.ToyShapes", "--data.root", str(tmp_path / "data"),
        "--data.shots", "2", "--data.classes", json.dumps(pair), "--trainer.max_epochs", "1",
        "--trainer.callbacks+=stori_pl.lightning.callbacks.WeightPlotCallback", "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "false",
    ])
    assert rc == 0
    (run,) = (tmp_path / "runs").glob("*/version_0")
    weights = json.loads((run / "weights" / "epoch_000.json").read_text())
    assert list(weights) == pair
    capsys.readouterr()
    assert stori_main(["explain", str(run / "checkpoints" / "last.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "2 classes" in out and all(f"== {c} ==" in out for c in pair)
