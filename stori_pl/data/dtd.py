"""Describable Textures (DTD, 47 classes) in CoOp's layout."""

from __future__ import annotations

from pathlib import Path

from stori_pl.data.base import FewShotDataModule
from stori_pl.data.cupl import cupl_url


class DTD(FewShotDataModule):
    """DTD: ``<root>/dtd/images/<class>/<class>_0001.jpg`` + ``dtd/split_zhou_DescribableTextures.json``.

    Class names are the folder names. Images: https://www.robots.ox.ac.uk/~vgg/data/dtd/ (torchvision).
    """

    folder = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    split_gdrive_id = "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"
    templates = ("{} texture.",)
    cupl_default = cupl_url("texture_prompts_full.json")

    def download_images(self, dataset_dir: Path) -> None:
        self._tv_download(dataset_dir, "DTD", "dtd/dtd/images")
