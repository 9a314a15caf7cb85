"""Oxford Flowers-102 in CoOp's layout."""

from __future__ import annotations

from pathlib import Path

from stori_pl.data.base import FewShotDataModule
from stori_pl.data.cupl import cupl_url


class Flowers102(FewShotDataModule):
    """Flowers-102: ``<root>/oxford_flowers/jpg/image_00001.jpg`` + ``split_zhou_OxfordFlowers.json``.

    Class names come from ``cat_to_name.json`` (already written into the split file).
    Images: https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (torchvision).
    """

    folder = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    split_gdrive_id = "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"
    extra_files = {"cat_to_name.json": "1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"}
    templates = ("a photo of a {}, a type of flower.",)
    cupl_default = cupl_url("flower_prompts_full.json")
    # CoOp name -> CuPL key (CuPL uses CLIP's flower names).
    cupl_name_map = {"globe-flower": "globe flower", "pink-yellow dahlia": "pink and yellow dahlia",
                     "ball moss": "air plant"}

    def download_images(self, dataset_dir: Path) -> None:
        self._tv_download(dataset_dir, "Flowers102", "flowers-102/jpg")
