"""Tiny fake datasets in each benchmark's real on-disk layout (CoOp's), plus CuPL-style prompt files.

``make_fake(name, root)`` writes ``root/<folder>/...`` for one benchmark (3 classes, a few 8x8 images per
class, a split file in the real schema) and a fake CuPL file keyed the way CuPL names the classes, and
returns a :class:`Fake` describing it. Images are colored by class so features differ between classes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass
class Fake:
    root: Path  # pass as `root`
    dataset_dir: Path
    classnames: list[str]  # what the datamodule should report (CoOp names, "_" -> " ")
    cupl: Path  # fake CuPL file keyed by CuPL's names
    counts: dict  # images per class per split


def make_image(path: Path, color: tuple[int, int, int], seed: int, size: int = 8) -> None:
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), color)
    for _ in range(6):
        im.putpixel((rng.randrange(size), rng.randrange(size)), tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=95)


COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (200, 200, 30), (200, 40, 200)]


def _write_split(dataset_dir: Path, image_dir: Path, split_file: str | None, classes, counts, naming):
    """classes: [(folder, coop_name)]; naming(folder, i) -> file name. Returns the split dict."""
    split = {"train": [], "val": [], "test": []}
    n = 0
    for label, (folder, name) in enumerate(classes):
        for part in ("train", "val", "test"):
            for _ in range(counts[part]):
                n += 1
                rel = f"{folder}/{naming(folder, n)}" if folder else naming(folder, n)
                make_image(image_dir / rel, COLORS[label % len(COLORS)], seed=n)
                split[part].append([rel, label, name])
    if split_file:
        (dataset_dir / split_file).write_text(json.dumps(split))
    return split


def _cupl(path: Path, keys: list[str], n: int = 4) -> Path:
    adjectives = ["red", "green", "blue", "small", "large", "round"]
    data = {k: [f"a {adjectives[(i + j) % 6]} photo of a {k}, view {j}." for j in range(n)]
            for i, k in enumerate(keys)}
    path.write_text(json.dumps(data))
    return path


def make_fake(name: str, root: str | Path, train: int = 4, val: int = 2, test: int = 2) -> Fake:
    """Write the fake layout of benchmark ``name`` (dtd, caltech101, flowers102, food101, sun397, imagenet)."""
    root = Path(root)
    counts = {"train": train, "val": val, "test": test}
    seq = lambda folder, n: f"image_{n:04d}.jpg"  # noqa: E731
    if name == "dtd":
        d = root / "dtd"
        classes = [(c, c) for c in ("banded", "blotchy", "braided")]
        _write_split(d, d / "images", "split_zhou_DescribableTextures.json", classes, counts,
                     lambda f, n: f"{f}_{n:04d}.jpg")
        keys = ["banded", "blotchy", "braided"]
    elif name == "caltech101":
        d = root / "caltech-101"
        classes = [("Faces", "face"), ("Leopards", "leopard"), ("car_side", "car_side"), ("yin_yang", "yin_yang")]
        _write_split(d, d / "101_ObjectCategories", "split_zhou_Caltech101.json", classes, counts, seq)
        for ignored in ("BACKGROUND_Google", "Faces_easy"):  # present on disk, not in the split
            make_image(d / "101_ObjectCategories" / ignored / "image_0001.jpg", (0, 0, 0), 0)
        keys = ["background", "off-center face", "centered face", "leopard", "side of a car",
                "yin and yang symbol"]
    elif name == "flowers102":
        d = root / "oxford_flowers"
        names = ["pink primrose", "globe-flower", "ball moss"]
        d.mkdir(parents=True, exist_ok=True)
        (d / "cat_to_name.json").write_text(json.dumps({str(i + 1): n for i, n in enumerate(names)}))
        classes = [("", n) for n in names]
        _write_split(d, d / "jpg", "split_zhou_OxfordFlowers.json", classes, counts,
                     lambda f, n: f"image_{n:05d}.jpg")
        keys = ["pink primrose", "globe flower", "air plant"]
    elif name == "food101":
        d = root / "food-101"
        classes = [(c, c) for c in ("apple_pie", "baby_back_ribs", "baklava")]
        _write_split(d, d / "images", "split_zhou_Food101.json", classes, counts, lambda f, n: f"{100000 + n}.jpg")
        keys = ["baklava", "apple pie", "baby back ribs"]
    elif name == "sun397":
        d = root / "sun397"
        classes = [("a/abbey", "abbey"), ("a/apse/indoor", "indoor apse"), ("b/bakery/shop", "shop bakery")]
        _write_split(d, d / "SUN397", "split_zhou_SUN397.json", classes, counts, lambda f, n: f"sun_{n:08d}.jpg")
        (d / "ClassName.txt").write_text("/a/abbey\n/a/apse/indoor\n/b/bakery/shop\n")
        keys = ["abbey", "apse (indoor)", "bakery (shop)"]
    elif name == "imagenet":
        d = root / "imagenet"
        wnids = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n04008634", "projectile")]
        d.mkdir(parents=True, exist_ok=True)
        (d / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in wnids))
        n = 0
        for label, (w, _) in enumerate(wnids):
            for part, folder in (("train", "train"), ("test", "val")):
                k = counts["train"] + counts["val"] if part == "train" else counts["test"]
                for _ in range(k):
                    n += 1
                    make_image(d / "images" / folder / w / f"{w}_{n}.JPEG", COLORS[label], seed=n)
        classes = [(w, nm) for w, nm in wnids]
        keys = ["tench", "goldfish", "missile"]
        counts = {"train": train + val, "val": 0, "test": test}
    else:
        raise ValueError(f"unknown fake benchmark {name!r}")
    cupl = _cupl(root / f"{name}_cupl.json", keys)
    return Fake(root, d, [c[1].replace("_", " ") for c in classes], cupl, counts)


BENCHMARKS = ("dtd", "caltech101", "flowers102", "food101", "sun397", "imagenet")
