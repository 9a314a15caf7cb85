"""Every shipped config parses and instantiates; the 30 benchmark configs carry the paper's recipe."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BENCH = re.compile(r"^(imagenet|dtd|sun397|flowers102|caltech101|food101)_(1|2|4|8|16)shot\.yaml$")
CLASSES = {"imagenet": "ImageNet", "dtd": "DTD", "sun397": "SUN397", "flowers102": "Flowers102",
           "caltech101": "Caltech101", "food101": "Food101"}


def paper_recipe(dataset: str, shots: int) -> dict:
    """SToRI App. A.1, written out independently of tools/make_configs.py."""
    lr = {"imagenet": 1e-2, "sun397": 1e-2, "food101": 0.1}.get(dataset, 5e-2)
    if dataset in ("dtd", "flowers102") and shots in (8, 16):
        lr = 0.1
    return {"lr": lr, "max_epochs": 100 if shots in (1, 2, 4) else 200, "batch_size": 256,
            "prompts_per_class": 10 if dataset in ("imagenet", "sun397") else None}


@pytest.fixture(scope="module")
def tiny12(tmp_path_factory):
    """A random CLIP as tiny as stori-tiny but with 12 text blocks, so start_block 7 is valid."""
    import open_clip

    cfg = json.loads((Path(__file__).resolve().parents[1] / "stori_pl/model_configs/stori-tiny.json").read_text())
    cfg["text_cfg"]["layers"] = 12
    path = tmp_path_factory.mktemp("cfg") / "stori-tiny12.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return "stori-tiny12"


def test_thirty_benchmark_configs_exist():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml") if BENCH.match(p.name))
    assert len(names) == 30
    assert (Path(__file__).resolve().parents[1] / "stori_pl/configs/dtd_16shot.yaml").is_file()  # shipped


@pytest.fixture(scope="module")
def parser(tmp_path_factory):
    """The `stori` parser (one instance: building it is the slow part)."""
    import os

    from stori_pl.lightning.cli import StoriCLI

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cli"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli = StoriCLI(args=["--config", str(CONFIGS / "dtd_16shot.yaml"), "--trainer.logger=false"], run=False,
                           load_from_checkpoint_support=False)
    finally:
        os.chdir(cwd)
    return cli.parser


def lightning_configs() -> list[Path]:
    """Configs of `stori fit/test` (others, e.g. for `stori retrieval-eval`, have no trainer section)."""
    return [p for p in sorted(CONFIGS.glob("*.yaml")) if re.search(r"^trainer:", p.read_text(), re.M)]


@pytest.mark.parametrize("path", lightning_configs(), ids=lambda p: p.name)
def test_config_parses_and_builds(path, parser, tiny12, monkeypatch):
    import stori_pl.text.clip
    from stori_pl.data.base import PromptSet

    real = stori_pl.text.clip.load_clip
    monkeypatch.setattr(stori_pl.text.clip, "load_clip", lambda name, pretrained=None, **kw: real(tiny12, None))
    cfg = parser.parse_args(["--config", str(path)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init = parser.instantiate_classes(cfg)
    model, dm = init.model, init.data
    m = BENCH.match(path.name)
    if m:
        dataset, shots = m.group(1), int(m.group(2))
        want = paper_recipe(dataset, shots)
        assert type(model).__name__ == "StoriClassifier"
        assert type(dm).__name__ == CLASSES[dataset]
        assert model.hparams.lr == pytest.approx(want["lr"])
        assert model.hparams.weight_decay == 0 and model.hparams.start_block == 7
        assert (model.hparams.clip_model, model.hparams.pretrained) == ("ViT-L-14", "openai")
        assert (dm.clip_model, dm.pretrained) == ("ViT-L-14", "openai")  # linked from the model
        assert cfg.trainer.max_epochs == want["max_epochs"]
        assert (dm.shots, dm.seed, dm.batch_size) == (shots, 1, want["batch_size"])
        assert dm.prompts_per_class == want["prompts_per_class"]
        assert cfg.seed_everything == 1
        assert cfg.checkpoint.monitor == "val/acc" and cfg.checkpoint.mode == "max"  # few-shot val, never test
        assert cfg.trainer.logger.init_args.name == path.stem
        assert any(type(c).__name__ == "WeightPlotCallback" for c in init.trainer.callbacks)
    # the model builds on a (tiny) CLIP with the config's start block and chunking
    ps = PromptSet(["a", "b"], [["a photo of a."], ["a photo of b."]], [["an a thing."], ["a b thing."]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.build(ps.to_dict())
    assert model.class_embeddings().shape == (2, 32)
