"""The six benchmark datamodules on tiny fake layouts: loading, sampling, prompts, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fakedata import BENCHMARKS, make_fake

import stori_pl.data.features as F
from stori_pl.data import (
    DTD,
    SUN397,
    Caltech101,
    Flowers102,
    Food101,
    ImageNet,
    PromptSet,
    coop,
)

CLASSES = {"dtd": DTD, "caltech101": Caltech101, "flowers102": Flowers102, "food101": Food101,
           "sun397": SUN397, "imagenet": ImageNet}


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    return {b: make_fake(b, root / b) for b in BENCHMARKS}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STORI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def make_dm(cls, fake, **kw):
    kw = {"clip_model": "stori-tiny", "pretrained": None, "shots": 2, "cupl": str(fake.cupl), "num_workers": 0,
          "batch_size": 4, **kw}
    return cls(root=str(kw.pop("root", fake.root)), **kw)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_loads_fake_layout(name, fakes, cache, tiny_clip):
    fake = fakes[name]
    dm = make_dm(CLASSES[name], fake)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.classnames == fake.classnames
    C = len(fake.classnames)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"features", "label"}
    assert batch["features"].dtype == torch.float32 and batch["features"].shape == (4, dm.feature_dim)
    assert dm.feature_dim == 32 and batch["label"].dtype == torch.long
    torch.testing.assert_close(batch["features"].norm(dim=-1), torch.ones(4))
    labels = lambda loader: torch.cat([b["label"] for b in loader])  # noqa: E731
    assert sorted(labels(dm.train_dataloader()).tolist()) == sorted(list(range(C)) * 2)  # 2 shots per class
    assert sorted(labels(dm.val_dataloader()).tolist()) == sorted(list(range(C)) * 2)  # min(2, 4) per class
    dm.setup("test")
    assert len(labels(dm.test_dataloader())) == C * fake.counts["test"]
    ps = dm.prompt_set()
    assert ps.classnames == fake.classnames and all(len(p) == 4 for p in ps.cupl)
    assert ps.base[0] == [t.format(fake.classnames[0]) for t in dm.templates]
    assert PromptSet.from_dict(json.loads(json.dumps(ps.to_dict()))) == ps


def test_templates_and_name_maps(fakes, cache, tiny_clip):
    flowers = make_dm(Flowers102, fakes["flowers102"]).prompt_set()
    assert flowers.base[1] == ["a photo of a globe-flower, a type of flower."]
    assert flowers.cupl[2][0] == "a blue photo of a air plant, view 0."  # ball moss -> CuPL's "air plant"
    sun = make_dm(SUN397, fakes["sun397"]).prompt_set()
    assert "apse (indoor)" in sun.cupl[1][0]
    cal = make_dm(Caltech101, fakes["caltech101"]).prompt_set()
    assert "off-center face" in cal.cupl[0][0] and "side of a car" in cal.cupl[2][0]
    inet = make_dm(ImageNet, fakes["imagenet"]).prompt_set()
    assert "missile" in inet.cupl[2][0]
    food = make_dm(Food101, fakes["food101"]).prompt_set()
    assert food.base[1] == ["a photo of baby back ribs, a type of food."]
    assert make_dm(DTD, fakes["dtd"]).prompt_set().base[0] == ["banded texture."]


def test_second_run_encodes_nothing(fakes, cache, tiny_clip, encode_counter):
    dm = make_dm(DTD, fakes["dtd"])
    dm.prepare_data()
    dm.setup("fit")
    first = [b["features"] for b in dm.val_dataloader()]
    calls = encode_counter.calls
    assert calls > 0
    dm2 = make_dm(DTD, fakes["dtd"])
    dm2.prepare_data()
    dm2.setup("fit")
    dm2.setup("test")
    assert encode_counter.calls == calls
    torch.testing.assert_close(torch.cat(first), torch.cat([b["features"] for b in dm2.val_dataloader()]))
    assert len(list((cache / "features").glob("*.safetensors"))) == 3  # train, val, test


def test_classes_subset_and_direct_dataset_root(fakes, cache, tiny_clip):
    fake = fakes["sun397"]
    dm = make_dm(SUN397, fake, classes=["shop bakery", "abbey"], root=fake.dataset_dir)
    dm.setup("fit")
    assert dm.classnames == ["shop bakery", "abbey"]
    assert sorted(torch.cat([b["label"] for b in dm.train_dataloader()]).tolist()) == [0, 0, 1, 1]
    ps = dm.prompt_set()
    assert "bakery (shop)" in ps.cupl[0][0] and "abbey" in ps.cupl[1][0]
    with pytest.raises(ValueError, match=r"classes \['dog'\] are not in SUN397"):
        make_dm(SUN397, fake, classes=["dog"]).setup("fit")


def test_fewshot_file_pins_subset(fakes, cache, tiny_clip, tmp_path):
    fake = fakes["dtd"]
    split = json.loads((fake.dataset_dir / "split_zhou_DescribableTextures.json").read_text())
    index = {p: {"data": [{"impath": f"./data/dtd/images/{split[p][i][0]}", "label": split[p][i][1],
                           "classname": split[p][i][2]} for i in idx], "indices": idx}
             for p, idx in (("train", [0, 4, 8]), ("val", [1, 3]))}
    f = tmp_path / "shot_1-seed_1.json"
    f.write_text(json.dumps(index))
    dm = make_dm(DTD, fake, fewshot_file=str(f))
    dm.setup("fit")
    assert torch.cat([b["label"] for b in dm.train_dataloader()]).sort().values.tolist() == [0, 1, 2]
    assert len(dm.val_dataloader().dataset) == 2


def test_prompts_per_class_keeps_top_n(fakes, cache, tiny_clip):
    dm = make_dm(DTD, fakes["dtd"], prompts_per_class=2)
    dm.setup("fit")
    ps = dm.prompt_set()
    full = make_dm(DTD, fakes["dtd"]).prompt_set()
    assert all(len(p) == 2 and set(p) <= set(q) for p, q in zip(ps.cupl, full.cupl))


def test_augment_views(fakes, cache, tiny_clip):
    dm = make_dm(DTD, fakes["dtd"], augment_views=2)
    dm.setup("fit")
    assert dm._data["train"].features.shape == (6, 3, 32)  # plain view + 2 augmented
    assert next(iter(dm.train_dataloader()))["features"].shape == (4, 32)
    assert next(iter(dm.val_dataloader()))["features"].shape == (4, 32)


def test_bad_arguments(fakes):
    for kw, msg in (({"shots": 0}, "shots"), ({"seed": "1"}, "seed"), ({"prompts_per_class": 0}, "prompts"),
                    ({"augment_views": -1}, "augment_views")):
        with pytest.raises(ValueError, match=msg):
            make_dm(DTD, fakes["dtd"], **kw)


def test_missing_root_split_and_classnames(tmp_path, cache, tiny_clip):
    with pytest.raises(FileNotFoundError, match="data root not found: .*nowhere"):
        DTD(root=str(tmp_path / "nowhere"), clip_model="stori-tiny", pretrained=None).setup("fit")
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"dtd/split_zhou_DescribableTextures\.json.*drive\.google\.com"):
        DTD(root=str(tmp_path), clip_model="stori-tiny", pretrained=None).setup("fit")
    (tmp_path / "imagenet" / "images" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"imagenet/classnames\.txt.*drive\.google\.com"):
        ImageNet(root=str(tmp_path), clip_model="stori-tiny", pretrained=None).setup("fit")


def test_missing_images_one_error(fakes, cache, tiny_clip, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fakes["food101"].root, root)
    for f in sorted((root / "food-101" / "images" / "baklava").iterdir())[:3]:
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)\d of \d+ (train|val|test) images .* missing.*baklava"):
        make_dm(Food101, fakes["food101"], root=root).setup(None)


def test_corrupt_image_named_or_skipped(fakes, cache, tiny_clip, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fakes["dtd"].root, root)
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    bad = root / "dtd" / "images" / split["test"][0][0]
    bad.write_bytes(b"not an image")
    with pytest.raises(F.BadImageError, match=bad.name):
        make_dm(DTD, fakes["dtd"], root=root).setup("test")
    assert not list((cache / "features").glob("*")) or all(
        p.suffix == ".safetensors" for p in (cache / "features").iterdir())  # no temp files left behind
    dm = make_dm(DTD, fakes["dtd"], root=root, skip_bad_images=True)
    with pytest.warns(UserWarning, match=bad.name):
        dm.setup("test")
    assert len(dm.test_dataloader().dataset) == len(split["test"]) - 1


def test_download_failure_says_what_where_and_source(tmp_path, monkeypatch, cache):
    import torchvision.datasets.utils as tvu

    def no_network(file_id, root, filename=None, md5=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvu, "download_file_from_google_drive", no_network)
    monkeypatch.setattr(coop, "require_gdown", lambda: None)  # as if the download extra were installed
    dm = DTD(root=str(tmp_path), clip_model="stori-tiny", pretrained=None, download=True)
    with pytest.raises(RuntimeError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert "split_zhou_DescribableTextures.json" in msg
    assert str(tmp_path / "dtd" / "split_zhou_DescribableTextures.json") in msg
    assert "https://drive.google.com/file/d/1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x" in msg
    assert not (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").exists()
