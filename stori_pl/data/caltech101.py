"""Caltech-101 (100 classes as CoOp uses it) in CoOp's layout."""

from __future__ import annotations

from pathlib import Path

from stori_pl.data.base import FewShotDataModule
from stori_pl.data.cupl import cupl_url

IGNORED = ("BACKGROUND_Google", "Faces_easy")
"""Folders CoOp leaves out."""
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
"""CoOp's renames of folder names."""


class Caltech101(FewShotDataModule):
    """Caltech-101: ``<root>/caltech-101/101_ObjectCategories/<folder>/image_0001.jpg`` + split file.

    CoOp drops ``BACKGROUND_Google`` and ``Faces_easy`` and renames four folders (``NEW_CNAMES``).
    Images: https://data.caltech.edu/records/mzrjq-6wc02 (torchvision).
    """

    folder = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    split_gdrive_id = "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"
    templates = ("a photo of a {}.",)
    cupl_default = cupl_url("cal_prompts_full.json")
    # CoOp name -> CuPL key; CuPL's extra keys "background" and "centered face" (Faces_easy) stay unused.
    cupl_name_map = {
        "face": "off-center face",
        "car side": "side of a car",
        "cougar body": "body of a cougar cat",
        "cougar face": "face of a cougar cat",
        "crocodile head": "head of a crocodile",
        "flamingo head": "head of a flamingo",
        "snoopy": "snoopy (cartoon beagle)",
        "yin yang": "yin and yang symbol",
    }

    @staticmethod
    def coop_classname(folder: str) -> str | None:
        """CoOp's class name of an image folder; None for the folders CoOp ignores."""
        return None if folder in IGNORED else NEW_CNAMES.get(folder, folder)

    def download_images(self, dataset_dir: Path) -> None:
        self._tv_download(dataset_dir, "Caltech101", "caltech101/101_ObjectCategories")
