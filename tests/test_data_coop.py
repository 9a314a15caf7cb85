"""CoOp split handling: the few-shot sampler reproduces CoOp's published index files exactly."""

from __future__ import annotations

import json
import re

import pytest

from stori_pl.data import coop
from stori_pl.data.caltech101 import Caltech101
from stori_pl.data.dtd import DTD
from stori_pl.data.sun397 import SUN397

SPLITS = {"dtd": "DescribableTextures", "caltech101": "Caltech101", "oxford_flowers": "OxfordFlowers"}


def _index_files(shared, ds):
    files = sorted((shared / "coop_splits" / "fewshot_indices" / ds).glob("shot_*-seed_*.json"))
    assert len(files) == 15, files  # k in 1,2,4,8,16 x seeds 1-3
    for f in files:
        k, s = map(int, re.match(r"shot_(\d+)-seed_(\d+)", f.name).groups())
        yield f, k, s


@pytest.mark.parametrize("ds", sorted(SPLITS))
def test_few_shot_split_reproduces_coop_index_files(shared_data, ds):
    split = coop.read_split(shared_data / "coop_splits" / f"split_zhou_{SPLITS[ds]}.json")
    for f, k, s in _index_files(shared_data, ds):
        index = json.loads(f.read_text())
        ours = coop.few_shot_split(split, k, s)
        for part in ("train", "val"):
            want = [split[part][i] for i in index[part]["indices"]]
            assert ours[part] == want, f"{f.name} {part}"
            # The data entries carry a ./data/<ds>/<images>/ prefix; same item, label, class, order.
            for e, item in zip(ours[part], index[part]["data"]):
                assert item["impath"].endswith("/" + e[0]) and item["label"] == e[1] and item["classname"] == e[2]
        assert len(ours["val"]) == len(index["val"]["data"])
        # fewshot_file pins the very same subset
        assert coop.load_fewshot_file(f, split) == ours


def test_few_shot_counts_and_determinism(shared_data):
    split = coop.read_split(shared_data / "coop_splits" / "split_zhou_DescribableTextures.json")
    a, b = coop.few_shot_split(split, 4, 1), coop.few_shot_split(split, 4, 1)
    assert a == b and len(a["train"]) == 47 * 4 and len(a["val"]) == 47 * 4
    assert coop.few_shot_split(split, 16, 1)["val"].__len__() == 47 * 4  # min(k, 4)
    assert coop.few_shot_split(split, 4, 2) != a


@pytest.mark.parametrize("ds,prefix",
                         [("food101", "./data/food-101/images/"), ("sun397", "./data/sun397/SUN397/")])
def test_fewshot_file_prefixes_of_real_index_files(shared_data, tmp_path, ds, prefix):
    """Index files pin subsets by impath; their ./data/<ds>/<images>/ prefix is matched by suffix."""
    index = json.loads((shared_data / "coop_splits" / "fewshot_indices" / ds / "shot_2-seed_1.json").read_text())
    split = {p: [[d["impath"].removeprefix(prefix), d["label"], d["classname"]] for d in index[p]["data"]][::-1]
             for p in ("train", "val")}
    assert not any(e[0].startswith(".") for e in split["train"])
    for part in index.values():
        del part["indices"]
    path = tmp_path / "shot_2-seed_1.json"
    path.write_text(json.dumps(index))
    pinned = coop.load_fewshot_file(path, {**split, "test": []})
    assert pinned["train"] == split["train"][::-1] and pinned["val"] == split["val"][::-1]
    assert len(coop.classnames_from_split({**pinned, "test": []})) == {"food101": 101, "sun397": 397}[ds]


def test_real_split_classnames_follow_coop_cleaning(shared_data):
    """Class names in CoOp's split files are what our cleaning rules give for the image folders."""
    cal = coop.read_split(shared_data / "coop_splits" / "split_zhou_Caltech101.json")
    dtd = coop.read_split(shared_data / "coop_splits" / "split_zhou_DescribableTextures.json")
    for split, cls in ((cal, Caltech101), (dtd, DTD)):
        for part in ("train", "val", "test"):
            for impath, _, name in split[part]:
                assert cls.coop_classname(impath.split("/")[0]) == name
    names = coop.classnames_from_split(cal)
    assert len(names) == 100 and "face" in names and "Faces_easy" not in names
    assert Caltech101.coop_classname("BACKGROUND_Google") is None
    assert SUN397.coop_classname("/a/apse/indoor") == "indoor apse"
    assert SUN397.coop_classname("/a/airplane_cabin") == "airplane_cabin"


def _toy_split():
    train = [[f"c{c}/{i}.jpg", c, f"class_{c}"] for c in (1, 0, 2) for i in range(6)]
    return {"train": train, "val": [], "test": train[:3]}


def test_empty_val_is_drawn_from_unused_train():
    fs = coop.few_shot_split(_toy_split(), 2, 1)
    assert len(fs["train"]) == 6 and len(fs["val"]) == 6
    assert not {e[0] for e in fs["train"]} & {e[0] for e in fs["val"]}
    assert [e[1] for e in fs["train"]][::2] == [1, 0, 2]  # labels in order of first appearance


def test_classes_with_few_images_give_all_their_images():
    fs = coop.few_shot_split(_toy_split(), 16, 3)  # 3 classes of 6 training images, no val list
    assert len(fs["train"]) == 3 * 6  # every image once (CoOp: Dassl's generate_fewshot_dataset, repeat=False)
    assert not fs["val"]  # no train image left over for val


@pytest.mark.parametrize("shots,seed",
                         [(0, 1), (-1, 1), ("4", 1), (True, 1), (2.0, 1), (4, 1.5), (4, "1"), (4, None)])
def test_bad_shots_or_seed(shots, seed):
    with pytest.raises(ValueError, match="shots|seed"):
        coop.few_shot_split(_toy_split(), shots, seed)


def test_read_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"split_zhou_X\.json.*drive\.google"):
        coop.read_split(tmp_path / "split_zhou_X.json", "https://drive.google.com/x")
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": [["a.jpg", "zero", "c"]], "test": []}')
    with pytest.raises(ValueError, match=r"bad\.json: train\[0\]"):
        coop.read_split(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        coop.read_split(bad)


def test_classnames_from_split_errors():
    with pytest.raises(ValueError, match="two class names"):
        coop.classnames_from_split({"train": [["a", 0, "x"], ["b", 0, "y"]], "test": []})
    with pytest.raises(ValueError, match=r"missing labels \[1\]"):
        coop.classnames_from_split({"train": [["a", 0, "x"], ["b", 2, "y"]], "test": []})


def test_fewshot_file_from_another_split_is_rejected(tmp_path):
    split = _toy_split()
    index = {p: {"data": [{"impath": "./data/x/images/other.jpg", "label": 0, "classname": "c"}], "indices": [0]}
             for p in ("train", "val")}
    f = tmp_path / "shot_1-seed_1.json"
    f.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="another split"):
        coop.load_fewshot_file(f, split)
    for part in index.values():  # without indices: matched by impath suffix
        del part["indices"]
        part["data"][0]["impath"] = "./data/x/images/c2/3.jpg"
    f.write_text(json.dumps(index))
    assert coop.load_fewshot_file(f, split)["train"] == [["c2/3.jpg", 2, "class_2"]]
    with pytest.raises(FileNotFoundError, match="fewshot_file not found"):
        coop.load_fewshot_file(tmp_path / "nope.json", split)


def test_class_with_fewer_images_than_shots_gives_all_of_them():
    """CoOp calls Dassl's generate_fewshot_dataset(train, num_shots) with repeat=False (Dassl.pytorch
    dassl/data/datasets/base_dataset.py:167, CoOp datasets/dtd.py:41): sample for a big class, all of a short one."""
    import random

    entries = [[f"a{i}.jpg", 0, "a"] for i in range(20)] + [[f"b{i}.jpg", 1, "b"] for i in range(3)]
    with pytest.warns(coop.FewerImagesWarning, match="1 of 2 classes"):
        out = coop.few_shot_split({"train": entries, "val": entries}, shots=8, seed=1)
    rng = random.Random(1)  # the reference, written from Dassl's loop
    expected = rng.sample(entries[:20], 8) + entries[20:]
    assert out["train"] == expected
    assert len([e for e in out["val"] if e[1] == 1]) == 3  # val keeps what there is (min(8, 4) = 4 > 3)
