"""Every shipped config parses; the per-method configs carry their published recipes (re-typed here from the
official code and papers, independently of tools/make_configs.py)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import patch_load_clip

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASETS = {"imagenet": "ImageNet", "dtd": "DTD", "sun397": "SUN397", "flowers102": "Flowers102",
            "caltech101": "Caltech101", "food101": "Food101", "toy_shapes": "ToyShapes"}
METHODS = ("stori", "taskres_base", "taskres_cupl", "coop", "tip_adapter", "tip_adapter_f", "linear_probe",
           "zero_shot", "cupl")
SHOTS = (1, 2, 4, 8, 16)
NAME = re.compile(r"^(\w+?)_(1|2|4|8|16)shot\.yaml$")


def recipe(method: str, dataset: str, shots: int) -> dict:
    """What each method's config must say: {dotted key: value}."""
    if method == "stori" and dataset == "toy_shapes":  # the demo's setting (configs/demo.yaml)
        return {"model.init_args.start_block": 7, "model.init_args.lr": 0.4, "trainer.max_epochs": 30,
                "model.init_args.freeze_function_words": True}
    if method == "stori":  # SToRI App. A.1
        lr = {"imagenet": 1e-2, "sun397": 1e-2, "food101": 0.1}.get(dataset, 5e-2)
        if dataset in ("dtd", "flowers102") and shots in (8, 16):
            lr = 0.1
        return {"model.init_args.lr": lr, "model.init_args.weight_decay": 0.0, "data.init_args.batch_size": 256,
                "trainer.max_epochs": 100 if shots in (1, 2, 4) else 200,
                "data.init_args.prompts_per_class": 10 if dataset in ("imagenet", "sun397") else None}
    if method.startswith("taskres"):  # SToRI's Table-2 reproduction of TaskRes; geekyutao/TaskRes epochs
        out = {"model.init_args.lr": 2e-5 if dataset == "imagenet" else 2e-4, "model.init_args.weight_decay": 5e-3,
               "model.init_args.alpha": 0.5, "data.init_args.batch_size": 256, "data.init_args.augment_views": 10,
               "model.init_args.use_cupl_prompts": method == "taskres_cupl",
               "trainer.max_epochs": 100 if shots in (1, 2, 4) else 200, "data.init_args.augment_scale": [0.08, 1.0],
               # trainers/taskres.py l. 133-134: the raw Dassl class name; dassl data_manager.py l. 43: drop_last
               "model.init_args.classname_format": "dassl", "data.init_args.drop_last": True}
        if dataset == "imagenet":
            out["data.init_args.templates"] = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                                               "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                                               "a photo of the small {}.", "a photo of a {}."]
        return out
    if method == "coop":  # KaiyangZhou/CoOp: COOP.md + configs/trainers/CoOp/*.yaml + Dassl defaults
        epochs = 50 if dataset == "imagenet" or shots == 1 else 100 if shots in (2, 4) else 200
        return {"model.init_args.n_ctx": 16, "model.init_args.lr": 0.002, "model.init_args.momentum": 0.9,
                "model.init_args.weight_decay": 5e-4, "data.init_args.batch_size": 32, "trainer.max_epochs": epochs,
                "data.init_args.augment_views": 10, "data.init_args.drop_last": True,  # Dassl's data manager
                "model.init_args.ctx_init_count": "words"}  # trainers/coop.py l. 75
    if method.startswith("tip_adapter"):  # gaopengcuhk/Tip-Adapter configs/<dataset>.yaml
        scale = {"imagenet": [7.0, 3.0], "dtd": [13.0, 13.0], "sun397": [12.0, 10.0], "flowers102": [50.0, 50.0],
                 "caltech101": [12.0, 5.0], "food101": [10.0, 10.0], "toy_shapes": [13.0, 13.0]}[dataset]
        alpha = {"imagenet": 1.17, "dtd": 2.0, "sun397": 1.17, "flowers102": 10.0, "caltech101": 3.0,
                 "food101": 1.17, "toy_shapes": 2.0}[dataset]
        out = {"model.init_args.search_scale": scale, "model.init_args.search_step": [200, 20],
               "model.init_args.init_alpha": alpha, "model.init_args.init_beta": 1.0, "model.init_args.lr": 1e-3,
               "model.init_args.fine_tune": method == "tip_adapter_f", "data.init_args.augment_views": 10,
               "data.init_args.augment_scale": [0.5, 1.0], "data.init_args.batch_size": 256,
               "trainer.max_epochs": 20 if method == "tip_adapter_f" else 1,
               # main.py l. 168-171 (val not subsampled), main_imagenet.py l. 43 (searched on test)
               "model.init_args.search_split": "test" if dataset == "imagenet" else "val",
               "model.init_args.cache_views": "augmented", "model.init_args.select_epoch_on_test": False,
               "data.init_args.drop_last": False}  # datasets/utils.py l. 373
        if dataset == "imagenet":  # datasets/imagenet.py l. 177-183
            out["data.init_args.templates"] = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                                               "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                                               "a photo of the small {}."]
        return out
    if method == "linear_probe":  # CoOp lpclip/linear_probe.py
        return {"model.init_args.search_steps": 8, "model.init_args.max_iter": 1000, "data.init_args.augment_views": 0,
                "model.init_args.tol": 1e-4}  # sklearn LogisticRegression's default tol
    return {"model.init_args.use_base_prompts": True, "model.init_args.use_cupl_prompts": method == "cupl"}


def dig(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def test_every_method_dataset_and_shots_has_a_config():
    for method in METHODS:
        names = sorted(p.name for p in (CONFIGS / method).glob("*.yaml"))
        assert names == sorted(f"{d}_{k}shot.yaml" for d in DATASETS for k in SHOTS), method
    assert (Path(__file__).resolve().parents[1] / "stori_pl/configs/stori/dtd_16shot.yaml").is_file()  # shipped


@pytest.mark.parametrize("method", METHODS)
def test_recipes(method):
    classes = {"stori": "StoriClassifier", "coop": "CoOp", "linear_probe": "LinearProbe"}
    for path in sorted((CONFIGS / method).glob("*.yaml")):
        dataset, shots = NAME.match(path.name).group(1), int(NAME.match(path.name).group(2))
        cfg = yaml.safe_load(path.read_text())
        for key, want in recipe(method, dataset, shots).items():
            assert dig(cfg, key) == (pytest.approx(want) if isinstance(want, float) else want), (path, key)
        model = dig(cfg, "model.class_path").rsplit(".", 1)[-1]
        assert model == classes.get(method, {"taskres": "TaskRes", "tip": "TipAdapter"}.get(method.split("_")[0], "ZeroShotCLIP"))
        assert dig(cfg, "data.class_path").endswith("." + DATASETS[dataset]) and dig(cfg, "data.init_args.shots") == shots
        clip = ("stori-toy", "builtin") if dataset == "toy_shapes" else ("ViT-L-14", "openai")
        assert (dig(cfg, "model.init_args.clip_model"), dig(cfg, "model.init_args.pretrained")) == clip
        assert cfg["test_ckpt"] == "last" and cfg["seed_everything"] == 1  # Dassl's protocol: the final model
        assert cfg["checkpoint"]["monitor"] == "val/acc"  # model selection on few-shot val, never test
        assert dig(cfg, "trainer.logger.init_args.name") == f"{method}/{path.stem}"


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


@pytest.fixture(scope="module")
def parser(tmp_path_factory):
    """The `stori` parser (one instance: building it is the slow part)."""
    import os

    from stori_pl.cli.lightning_cli import StoriCLI

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cli"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli = StoriCLI(args=["--config", str(CONFIGS / "stori" / "dtd_16shot.yaml"), "--trainer.logger=false"], run=False,
                           load_from_checkpoint_support=False)
    finally:
        os.chdir(cwd)
    return cli.parser


def sample_configs() -> list[Path]:
    """Configs of `stori fit/test` that are built here: the top-level ones (demo) and, per method, three."""
    top = [p for p in sorted(CONFIGS.glob("*.yaml")) if re.search(r"^trainer:", p.read_text(), re.M)]
    return top + [CONFIGS / m / f"{n}.yaml" for m in METHODS for n in ("dtd_16shot", "imagenet_1shot", "toy_shapes_4shot")]


@pytest.mark.parametrize("path", sample_configs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses_and_builds(path, parser, tiny12, monkeypatch):
    import stori_pl.text.clip
    from stori_pl.data.containers import PromptSet

    real = stori_pl.text.clip.load_clip
    patch_load_clip(monkeypatch, lambda name, pretrained=None, **kw: real(tiny12, None))
    cfg = parser.parse_args(["--config", str(path)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init = parser.instantiate_classes(cfg)
    model, dm = init.model, init.data
    assert (dm.clip_model, dm.pretrained) == (model.hparams.clip_model, model.hparams.pretrained)  # linked
    if path.parent.name == "stori":
        assert any(type(c).__name__ == "WeightPlotCallback" for c in init.trainer.callbacks)
    # the model builds on a (tiny) CLIP with the config's arguments
    ps = PromptSet(["a", "b"], [["a photo of a."], ["a photo of b."]], [["an a thing."], ["a b thing."]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.build(ps.to_dict())
    assert model.class_embeddings().shape == (2, 32)


def test_committed_configs_are_what_make_configs_writes(tmp_path):
    """tools/make_configs.py regenerated into a temporary folder gives the committed files, byte for byte, and
    every committed file of a generated method folder is one it writes (no stale config)."""
    import sys

    sys.path.insert(0, str(CONFIGS.parent / "tools"))
    import make_configs

    make_configs.main(tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.yaml"))
    assert len(written) > 300
    for rel in written:
        assert (CONFIGS / rel).read_text() == (tmp_path / rel).read_text(), f"configs/{rel} differs from make_configs"
    folders = {rel.parts[0] for rel in written}
    committed = sorted(p.relative_to(CONFIGS) for f in folders for p in (CONFIGS / f).rglob("*.yaml"))
    assert committed == written
    assert (CONFIGS.parent / "stori_pl" / "configs").resolve() == CONFIGS.resolve()  # the package ships the same


def shipped_configs() -> list[Path]:
    """Every config the package ships (``stori fit --config NAME`` finds them)."""
    return sorted(CONFIGS.rglob("*.yaml"))


def test_every_shipped_config_parses(parser):
    """All shipped configs parse: the training configs with the one `stori fit` parser, the others (retrieval)
    with `stori retrieval-eval`'s (parsing only: building a CLIP per config is slow; test_config_parses_and_builds
    builds a sample). 362 configs take about 30 s here."""
    from stori_pl.cli import build_parser

    retrieval, failed = build_parser("retrieval-eval"), []
    for path in shipped_configs():
        fit = re.search(r"^trainer:", path.read_text(), re.M) is not None
        try:
            cfg = (parser if fit else retrieval).parse_args(["--config", str(path)])
        except SystemExit:
            failed.append(path.relative_to(CONFIGS).as_posix())
            continue
        assert cfg.model.class_path.startswith("stori_pl.models.") if fit else cfg.dataset, path
    assert failed == []


# ------------------------------------------------------------------------------------------------ IntCoOp
INTCOOP_STEMS = ([f"{d}_{k}shot" for d in DATASETS for k in SHOTS] + [f"{d}_b2n_16shot" for d in DATASETS]
                 + ["toy_shapes"])


def test_intcoop_configs_cover_every_dataset_shot_and_base_to_novel():
    names = sorted(p.stem for p in (CONFIGS / "intcoop").glob("*.yaml"))
    assert names == sorted(INTCOOP_STEMS)
    for stem in INTCOOP_STEMS:
        cfg = yaml.safe_load((CONFIGS / "intcoop" / f"{stem}.yaml").read_text())
        dataset = stem.split("_b2n")[0] if "_b2n" in stem else ("toy_shapes" if stem == "toy_shapes" else NAME.match(stem + ".yaml").group(1))
        toy = dataset == "toy_shapes"
        # CoCoOp's recipe for what IntCoOp's text leaves open (vit_b16_c4_ep10_batch1_ctxv1.yaml): ctx 4 from
        # "a photo of a", SGD lr 0.002, 10 epochs; the toy world: toy labels, 50 epochs (the demo: 20)
        want = {"model.class_path": "stori_pl.models.IntCoOp", "model.init_args.n_ctx": 4,
                "model.init_args.ctx_init": "a photo of a", "model.init_args.lr": 0.002,
                "model.init_args.visual_prompts": 0, "data.init_args.augment_views": 10,
                "data.init_args.attribute_labels": "toy" if toy else "blip2",
                "data.init_args.subsample_classes": "base" if "_b2n" in stem else "all",
                "trainer.max_epochs": 20 if stem == "toy_shapes" else 50 if toy else 10,
                "data.init_args.batch_size": 32 if toy else 4,
                "trainer.logger.init_args.name": f"intcoop/{stem}"}
        for key, value in want.items():
            assert dig(cfg, key) == value, (stem, key)
        assert dig(cfg, "data.class_path").endswith("." + DATASETS[dataset])


@pytest.mark.parametrize("stem", ["dtd_b2n_16shot", "toy_shapes_4shot"])
def test_intcoop_config_parses_and_builds(stem, parser, tiny12, monkeypatch):
    import torch

    import stori_pl.text.clip
    from stori_pl.data.containers import PromptSet

    real = stori_pl.text.clip.load_clip
    patch_load_clip(monkeypatch, lambda name, pretrained=None, **kw: real(tiny12, None))
    cfg = parser.parse_args(["--config", str(CONFIGS / "intcoop" / f"{stem}.yaml")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        init = parser.instantiate_classes(cfg)
        model = init.model
        model.build(PromptSet(["a", "b"], [["a photo of a."], ["a photo of b."]], [[], []]).to_dict())
    assert init.data.subsample_classes == ("base" if "b2n" in stem else "all")
    assert model(torch.randn(3, 32)).shape == (3, 2)
