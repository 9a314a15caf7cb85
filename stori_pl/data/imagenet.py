"""ImageNet-1k in CoOp's layout (test = the official val set)."""

from __future__ import annotations

import os
from pathlib import Path

from stori_pl.data import coop
from stori_pl.data.base import FewShotDataModule
from stori_pl.data.cupl import cupl_url
from stori_pl.data.features import IMAGE_EXTENSIONS

CLASSNAMES_GDRIVE_ID = "1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"


class ImageNet(FewShotDataModule):
    """ImageNet: ``<root>/imagenet/images/{train,val}/<wnid>/*.JPEG`` + ``imagenet/classnames.txt``.

    ``classnames.txt`` has one ``<wnid> <class name>`` line per class, in label order (CoOp's file, with
    CLIP's class names). There is no split file: train is the sorted listing of ``images/train``, test is
    ``images/val``; the few-shot val set is drawn from the remaining train images. This listing is
    deterministic but not identical to CoOp's (which depends on the file system's order).
    """

    folder = "imagenet"
    image_dir = "images"
    split_file = None
    extra_files = {"classnames.txt": CLASSNAMES_GDRIVE_ID}
    templates = ("a photo of a {}.",)
    ensemble_templates = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                          "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                          "a photo of the small {}.", "a photo of a {}.")
    """CLIP's 7 selected ImageNet templates + the base one (pass as `templates` to use them)."""
    cupl_default = cupl_url("imagenet_prompts_base.json", "base")
    # CuPL's ImageNet file repeats CLIP's duplicates "missile" and "sunglasses"; CoOp's names 744/836 differ.
    cupl_name_map = {744: "missile", 836: "sunglasses", "projectile": "missile", "sunglass": "sunglasses"}

    def _looks_like_dataset(self, d: Path) -> bool:
        return (d / "classnames.txt").is_file() or (d / self.image_dir / "train").is_dir()

    def read_classnames(self, dataset_dir: Path) -> list[tuple[str, str]]:
        """``[(wnid, name)]`` from ``classnames.txt``."""
        path = dataset_dir / "classnames.txt"
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet class list not found: {path}. Download CoOp's classnames.txt from "
                                    f"{coop.GDRIVE.format(CLASSNAMES_GDRIVE_ID)} and put it there.")
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                wnid, _, name = line.strip().partition(" ")
                if not name.strip():
                    raise ValueError(f"{path}:{n}: expected '<wnid> <class name>', got {line!r}")
                rows.append((wnid, name.strip()))
        return rows

    def load_split(self, dataset_dir: Path) -> dict[str, list[coop.Entry]]:
        classes = self.read_classnames(dataset_dir)
        split = {"train": [], "val": [], "test": []}
        for part, folder in (("train", "train"), ("test", "val")):
            base = dataset_dir / self.image_dir / folder
            missing = [w for w, _ in classes if not (base / w).is_dir()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(classes)} ImageNet class folders are missing under {base}, e.g. "
                    f"{missing[:5]}. Expected {base}/<wnid>/*.JPEG (val sorted into class folders, as in CoOp).")
            for label, (wnid, name) in enumerate(classes):
                files = sorted(e.name for e in os.scandir(base / wnid)
                               if e.name.lower().endswith(IMAGE_EXTENSIONS))
                split[part].extend([f"{folder}/{wnid}/{f}", label, name] for f in files)
        return split

    def download_images(self, dataset_dir: Path) -> None:
        raise RuntimeError(
            "ImageNet cannot be downloaded automatically (registration needed). Get ILSVRC2012 train and val "
            f"from https://image-net.org, extract them to {dataset_dir / 'images/train'} and "
            f"{dataset_dir / 'images/val'} with one folder per wnid (see docs/datasets.md).")
