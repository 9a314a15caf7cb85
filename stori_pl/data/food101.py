"""Food-101 (101 classes) in CoOp's layout."""

from __future__ import annotations

from pathlib import Path

from stori_pl.data.base import FewShotDataModule
from stori_pl.data.cupl import cupl_url


class Food101(FewShotDataModule):
    """Food-101: ``<root>/food-101/images/<class>/<id>.jpg`` + ``food-101/split_zhou_Food101.json``.

    Class names are the folder names (``apple_pie`` -> "apple pie" in prompts). Images (5 GB):
    https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ (torchvision).
    """

    folder = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"
    split_gdrive_id = "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"
    templates = ("a photo of {}, a type of food.",)
    cupl_default = cupl_url("food_prompts_full.json")

    def download_images(self, dataset_dir: Path) -> None:
        self._tv_download(dataset_dir, "Food101", "food-101/images")
