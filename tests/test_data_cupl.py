"""CuPL prompt files: every real file maps onto its dataset's classes; loading, caching, selection."""

from __future__ import annotations

import io
import json

import pytest
import torch

from stori_pl.data import coop, cupl
from stori_pl.data.caltech101 import Caltech101
from stori_pl.data.dtd import DTD
from stori_pl.data.flowers102 import Flowers102
from stori_pl.data.food101 import Food101
from stori_pl.data.imagenet import ImageNet
from stori_pl.data.sun397 import SUN397

# dataset -> (datamodule, CuPL file stem, SuS-X file, source of CoOp's class names)
DATASETS = {
    "dtd": (DTD, "texture", "dtd", "split_zhou_DescribableTextures.json"),
    "caltech101": (Caltech101, "cal", "caltech101", "split_zhou_Caltech101.json"),
    "flowers102": (Flowers102, "flower", "flowers102", "split_zhou_OxfordFlowers.json"),
    "food101": (Food101, "food", "food101", "fewshot_indices/food101/shot_1-seed_1.json"),
    "sun397": (SUN397, "sun", "sun397", "fewshot_indices/sun397/shot_1-seed_1.json"),
    "imagenet": (ImageNet, "imagenet", "imagenet", None),
}


def coop_classnames(shared, name):
    """CoOp's class names by label: split file, else a few-shot index file (1 shot = every class once),
    else (ImageNet) SuS-X's file, whose keys are CoOp's classnames.txt names."""
    _, _, susx, source = DATASETS[name]
    if source is None:
        return list(json.loads((shared / "cupl" / "susx_gpt3_prompts" / f"CuPL_prompts_{susx}.json").read_text()))
    data = json.loads((shared / "coop_splits" / source).read_text())
    if "indices" in data["train"]:
        data = {part: [[d["impath"], d["label"], d["classname"]] for d in data[part]["data"]] for part in data}
    return [n.replace("_", " ") for n in coop.classnames_from_split(data)]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_real_cupl_file_covers_every_class(shared_data, name):
    dm_cls, stem, susx, _ = DATASETS[name]
    names = coop_classnames(shared_data, name)
    assert len(names) == {"dtd": 47, "caltech101": 100, "flowers102": 102, "food101": 101, "sun397": 397,
                          "imagenet": 1000}[name]
    files = [shared_data / "cupl" / "susx_gpt3_prompts" / f"CuPL_prompts_{susx}.json"]
    files += [p for kind in ("base", "full")
              if (p := shared_data / "cupl" / f"{kind}_prompts" / f"{stem}_prompts_{kind}.json").is_file()]
    assert len(files) == (2 if name == "imagenet" else 3)
    for f in files:
        raw = cupl.load_cupl(f)
        prompts = cupl.match_cupl(raw, names, dm_cls.cupl_name_map, dm_cls.cupl_key_rule, source=str(f))
        assert len(prompts) == len(names) and all(len(p) > 0 for p in prompts), f
        assert all(isinstance(s, str) for p in prompts for s in p)


def test_name_maps_pick_the_right_keys(shared_data):
    cal = cupl.load_cupl(shared_data / "cupl" / "full_prompts" / "cal_prompts_full.json")
    names = coop_classnames(shared_data, "caltech101")
    got = cupl.match_cupl(cal, names, Caltech101.cupl_name_map)
    assert got[names.index("face")] == cal["off-center face"]
    assert got[names.index("yin yang")] == cal["yin and yang symbol"]
    sun = cupl.load_cupl(shared_data / "cupl" / "full_prompts" / "sun_prompts_full.json")
    names = coop_classnames(shared_data, "sun397")
    got = cupl.match_cupl(sun, names, {}, SUN397.cupl_key_rule)
    assert got[names.index("indoor apse")] == sun["apse (indoor)"]
    inet = cupl.load_cupl(shared_data / "cupl" / "base_prompts" / "imagenet_prompts_base.json")
    names = coop_classnames(shared_data, "imagenet")
    assert (names[657], names[744], names[836], names[837]) == ("missile", "projectile", "sunglass", "sunglasses")
    got = cupl.match_cupl(inet, names, ImageNet.cupl_name_map)
    assert got[744] == got[657] == inet["missile"] and got[836] == got[837] == inet["sunglasses"]


def test_paren_rule():
    assert cupl.paren_to_prefix("apse (indoor)") == "indoor apse"
    assert cupl.paren_to_prefix("bakery (shop)") == "shop bakery"
    assert cupl.paren_to_prefix("abbey") == "abbey"


def test_missing_classes_are_all_named():
    with pytest.raises(ValueError, match=r"no prompts for 2 of 3 classes: 1:'dog'.*2:'cat'.*close keys: \['cats"):
        cupl.match_cupl({"bird": ["a bird."], "cats": ["a cat."]}, ["bird", "dog", "cat"], source="x.json")
    # empty sentence lists count as missing too
    with pytest.raises(ValueError, match="1 of 1"):
        cupl.match_cupl({"bird": []}, ["bird"])


def test_load_cupl_validates(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        cupl.load_cupl(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"dog": "not a list"}')
    with pytest.raises(ValueError, match="'dog' is not a list"):
        cupl.load_cupl(bad)


def test_url_is_downloaded_once(tmp_path, monkeypatch):
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(b'{"dog": ["a dog."]}')

    monkeypatch.setattr(cupl.urllib.request, "urlopen", fake_urlopen)
    url = cupl.cupl_url("dog_prompts_full.json")
    assert url.startswith("https://raw.githubusercontent.com/sarahpratt/CuPL/" + cupl.CUPL_COMMIT)
    assert cupl.load_cupl(url, tmp_path) == {"dog": ["a dog."]}
    assert cupl.load_cupl(url, tmp_path) == {"dog": ["a dog."]}
    assert calls == [url]
    assert list((tmp_path / "cupl").glob("*dog_prompts_full.json"))

    def failing(url, timeout=None):
        raise OSError("no network")

    monkeypatch.setattr(cupl.urllib.request, "urlopen", failing)
    with pytest.raises(RuntimeError, match="other.json.*pass its path"):
        cupl.load_cupl("https://example.org/other.json", tmp_path)


def test_top_prompts_keeps_most_similar():
    # 2-D toy: class 0 images point along x; prompt i has a known text feature.
    texts = {"x": [1.0, 0.0], "y": [0.0, 1.0], "xy": [0.7071, 0.7071], "-x": [-1.0, 0.0]}
    prompts = [["y", "x", "-x", "xy"], ["x", "y"]]
    feats = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # [3, 2]
    labels = torch.tensor([0, 0, 1])
    encode = lambda t: torch.tensor([texts[s] for s in t])  # noqa: E731
    out = cupl.top_prompts(prompts, feats, labels, 2, encode)
    assert out == [["x", "xy"], ["x", "y"]]  # file order kept; class 1 has <= n prompts
