"""The SAE pipeline end to end on the toy CLIP: activation cache, `stori fit --config sae/toy_shapes.yaml`,
checkpoint, compatibility checks, the component table (concept, label, alignment, clarity) and bad input."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import stori_pl.data.features as features
from stori_pl.data.features import BadImageError, cls_activations
from stori_pl.image.tower import cls_activation
from stori_pl.interpret.concepts import (
    ComponentTable,
    describe_components,
    load_vocabulary,
)
from stori_pl.cli.lightning_args import RUN_CONFIG_DIR
from stori_pl.cli.lightning_cli import run_lightning_cli
from stori_pl.models import load_checkpoint
from stori_pl.models.sae import SparseAutoencoder
from stori_pl.text.clip import load_clip
from stori_pl.toy.images import (
    attribute_vocabulary,
    toy_images_folder,
    write_toy_images,
)

N_IMAGES = 48


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """`stori fit --config sae/toy_shapes.yaml` shrunk to CI size: 48 toy images, 2 epochs, m = 64, k = 4."""
    tmp = tmp_path_factory.mktemp("sae_fit")
    argv = ["fit", "--config", "sae/toy_shapes.yaml", f"--data.root={tmp}", f"--data.cache_dir={tmp / 'cache'}",
            f"--data.n_images={N_IMAGES}", "--data.batch_size=16", "--model.n_latents=64", "--model.k=4",
            "--model.dead_window=32", "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1",
            f"--trainer.logger.init_args.save_dir={tmp / 'runs'}", "--trainer.enable_progress_bar=false"]
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert run_lightning_cli(argv) == 0
    finally:
        os.chdir(cwd)
    run = next((tmp / "runs" / "sae" / "toy_shapes").glob("version_*"))
    paths, attrs = write_toy_images(toy_images_folder(tmp, N_IMAGES, 0), N_IMAGES, 0)
    return {"tmp": tmp, "run": run, "ckpt": run / "checkpoints" / "last.ckpt", "paths": paths, "attrs": attrs}


def test_fit_logs_and_writes_a_small_self_describing_checkpoint(fitted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(fitted["run"]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/explained_variance", "train/dead_fraction", "val/loss",
                "val/explained_variance", "val/dead_fraction", "test/explained_variance"):
        assert tag in tags, tag
    raw = torch.load(fitted["ckpt"], weights_only=True, map_location="cpu")
    assert raw["stori"]["model"] == "SparseAutoencoder"
    assert (raw["stori"]["clip_model"], raw["stori"]["block"], raw["stori"]["n_latents"]) == ("stori-toy", 6, 64)
    assert all(k.startswith("sae.") for k in raw["state_dict"])  # no CLIP weights
    module = load_checkpoint(fitted["ckpt"], expect=SparseAutoencoder)
    module.check_compatible("stori-toy", -1)
    assert module.block == 6 and module.sae.k == 4 and module.sae.n_latents == 64
    torch.testing.assert_close(module.sae.decoder_directions().norm(dim=1), torch.ones(64))


def test_another_clip_or_block_is_refused_with_both_names(fitted):
    module = load_checkpoint(fitted["ckpt"], expect=SparseAutoencoder)
    with pytest.raises(ValueError, match=r"'stori-toy' block 6.*'stori-tiny' block 1"):
        module.check_compatible("stori-tiny", 1)
    with pytest.raises(ValueError, match=r"block 6.*block 2"):
        module.check_compatible("stori-toy", 2)
    with pytest.raises(ValueError, match="block 6"):
        describe_components(module, "stori-tiny", fitted["paths"][:4], ["red"])
    fake = fitted["tmp"] / "classifier.ckpt"
    torch.save({"stori": {"model": "StoriClassifier"}, "state_dict": {}}, fake)
    with pytest.raises(ValueError, match="classifier.ckpt holds a StoriClassifier model, not a SparseAutoencoder"):
        load_checkpoint(fake, expect=SparseAutoencoder)


def test_activation_cache_encodes_once_and_matches_the_tower(fitted, monkeypatch):
    paths = fitted["paths"][:6]
    cache = fitted["tmp"] / "cache2"
    calls = []
    original = features.encode_cls_batch
    monkeypatch.setattr(features, "encode_cls_batch", lambda *a: calls.append(1) or original(*a))
    acts = cls_activations(paths, "stori-toy", "builtin", -1, cache)
    assert acts.shape == (6, 128) and calls
    calls.clear()
    torch.testing.assert_close(cls_activations(paths, "stori-toy", "builtin", 6, cache), acts)  # -1 == 6: cached
    assert not calls
    model, preprocess, _ = load_clip("stori-toy", "builtin")
    from PIL import Image

    x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
    torch.testing.assert_close(acts, cls_activation(model, x, 6), atol=1e-5, rtol=1e-5)
    n_files = len(list((cache / "features").glob("*.safetensors")))
    cls_activations(paths, "stori-toy", "builtin", 2, cache)
    assert len(list((cache / "features").glob("*.safetensors"))) == n_files + 1  # the block is in the key


def test_component_table_matches_the_authors_formulas(fitted):
    module = load_checkpoint(fitted["ckpt"], expect=SparseAutoencoder)
    vocab = list(attribute_vocabulary())
    table = describe_components(module, "stori-toy", fitted["paths"], vocab, top_n=5,
                                cache_dir=fitted["tmp"] / "cache", label_by="alignment")  # the authors' labels
    assert len(table) == 64 and table.concept.shape == (64, 128)
    k = int(torch.where((table.top_index >= 0).all(1))[0][0])
    top = table.top_paths(k)
    assert len(top) == 5 and table.labels[k] in vocab
    # the authors' formulas (find_relevant_semantics.py, interpretability_scores.clarity_score), re-typed:
    emb, _ = features.image_features(top, "stori-toy", "builtin", cache_dir=fitted["tmp"] / "other", progress=False)
    sem = emb.mean(0)
    model, _, tok = load_clip("stori-toy", "builtin")
    with torch.no_grad():
        labels, empty = model.encode_text(tok(vocab)), model.encode_text(tok([""]))[0]
    lab = F.cosine_similarity(sem[None], labels, dim=-1) - F.cosine_similarity(sem, empty, dim=-1)
    assert table.labels[k] == vocab[int(lab.argmax())]
    torch.testing.assert_close(table.alignment[k], lab.max(), atol=1e-4, rtol=0)
    v = F.normalize(emb, dim=-1)
    clarity = ((v.mean(-2).pow(2).sum(-1)) - 1 / v.shape[-2]) / (v.shape[-2] - 1) * v.shape[-2]
    torch.testing.assert_close(table.clarity[k], clarity, atol=1e-4, rtol=0)
    # activations sorted, and they are the latent's values on those images
    acts = cls_activations(top, "stori-toy", "builtin", 6, fitted["tmp"] / "cache")
    with torch.no_grad():
        z = module.sae.topk(module.sae.encode(acts))[:, k]
    torch.testing.assert_close(z, table.top_activation[k], atol=1e-5, rtol=1e-5)
    assert (table.top_activation[k].diff() <= 0).all()
    # toy purity of labelled components (tools/toy_components.py), recomputed for each row
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from toy_components import label_purity

    toy = attribute_vocabulary()
    for row in label_purity(table, fitted["attrs"]):
        attr, value = toy[row["label"]]
        share = sum(fitted["attrs"][i][attr] == value for i in table.top_index[row["component"]].tolist()) / 5
        assert row["attribute"] == attr and row["purity"] == share
    # round trip
    path = fitted["tmp"] / "components.safetensors"
    table.save(path)
    back = ComponentTable.load(path)
    assert back.labels == table.labels and back.top_paths(k) == top and back.block == 6
    torch.testing.assert_close(back.concept, table.concept)
    assert back.row(k)["label"] == table.labels[k]


def test_vocabulary_and_image_errors(fitted, tmp_path):
    empty = tmp_path / "words.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match=f"vocabulary file {empty} is empty"):
        load_vocabulary(empty)
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        load_vocabulary(tmp_path / "missing.txt")
    assert "red" in load_vocabulary() and len(load_vocabulary()) > 300
    assert load_vocabulary(["red", " red ", "", "star"]) == ["red", "star"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match=str(bad)):
        cls_activations([*fitted["paths"][:2], bad], "stori-toy", "builtin", -1, tmp_path / "cache")
    module = load_checkpoint(fitted["ckpt"], expect=SparseAutoencoder)
    with pytest.raises(ValueError, match="is empty"):
        describe_components(module, "stori-toy", fitted["paths"][:3], empty)


def test_shipped_configs_build_with_the_authors_recipe():
    from stori_pl.cli.lightning_cli import StoriCLI

    assert (RUN_CONFIG_DIR / "sae" / "toy_shapes.yaml").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = StoriCLI(args=["--config", str(RUN_CONFIG_DIR / "sae" / "imagenet_vit_b16.yaml"), "--trainer.logger=false"],
                       run=False)
    h = cli.model.hparams
    assert isinstance(cli.model, SparseAutoencoder)
    assert (h.clip_model, h.block, h.n_latents, h.k, h.lr, list(h.milestones)) == ("ViT-B-16", 12, 30000, 64, 2e-4, [24, 28])
    assert cli.datamodule.clip_model == "ViT-B-16" and cli.trainer.gradient_clip_val == 1.0
    assert Path(cli.datamodule.images).name == "train"


def test_cache_command_stores_activations(tmp_path, tiny_clip, monkeypatch):
    """`stori cache --activations_block N` fills the activation cache that cls_activations then reads."""
    import yaml
    from fakedata import make_fake

    from stori_pl.cli import run_command

    fake = make_fake("dtd", tmp_path / "data")
    cfg = {"model": {"class_path": "stori_pl.models.StoriClassifier",
                     "init_args": {"clip_model": "stori-tiny", "pretrained": None}},
           "data": {"class_path": "stori_pl.data.DTD",
                    "init_args": {"root": str(fake.root), "shots": 2, "cupl": str(fake.cupl), "num_workers": 0,
                                  "cache_dir": str(tmp_path / "cache")}}}
    path = tmp_path / "dtd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = ["--config", str(path), "--accelerator", "cpu", "--devices", "1", "--parts", "[val]",
            "--activations_block", "-1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_command("cache", argv) == 0
        from stori_pl.data import DTD

        dm = DTD(root=str(fake.root), clip_model="stori-tiny", pretrained=None, shots=2, cupl=str(fake.cupl),
                 num_workers=0, cache_dir=str(tmp_path / "cache"))
        dm.prepare_data()
        paths, _ = dm.image_lists(["val"])["val"]
        calls = []
        original = features.encode_cls_batch
        monkeypatch.setattr(features, "encode_cls_batch", lambda *a: calls.append(1) or original(*a))
        acts = cls_activations(paths, "stori-tiny", None, -1, tmp_path / "cache")
    assert not calls and acts.shape[0] == len(paths)  # everything came from the command's cache
    direct = cls_activations(paths, "stori-tiny", None, -1, tmp_path / "other")
    torch.testing.assert_close(acts, direct)
