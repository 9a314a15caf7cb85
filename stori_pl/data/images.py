"""Image tensors next to the cached features, for models that run the image tower themselves (IntCoOp's visual
prompts): ``FewShotDataModule(return_images=True)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from stori_pl.data.image_io import open_rgb


class WithImages(Dataset):
    """A feature dataset whose items also carry ``"image"``: the image through the CLIP's eval ``preprocess``
    (``[3, H, W]``), decoded on access.

    Args:
        features: The part's feature dataset (items: ``"features"``, ``"label"``, maybe ``"attribute"``).
        paths: Image files, aligned with ``features``.
        preprocess: The CLIP's image transform (PIL -> tensor).
    """

    def __init__(self, features: Dataset, paths: list[Path], preprocess: Callable):
        if len(paths) != len(features):
            raise ValueError(f"{len(paths)} image paths for {len(features)} cached features")
        self.features, self.paths, self.preprocess = features, paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.preprocess(open_rgb(self.paths[i]))
        return {**self.features[i], "image": image}


def images_loader(datamodule, features: Dataset, part: str, shuffle: bool = False):
    """The loader of one part of a ``FewShotDataModule(return_images=True)``: the part's cached-feature items
    (``features``) plus ``"image"`` (decoded by ``num_workers`` workers)."""
    from torch.utils.data import DataLoader

    from stori_pl.text.clip import load_clip

    preprocess = load_clip(datamodule.clip_model, datamodule.pretrained)[1]
    paths = [datamodule.image_root() / key for key in datamodule.image_keys(part)]
    data = WithImages(features, paths, preprocess)
    drop_last = part == "train" and getattr(datamodule, "drop_last", False) and len(data) >= datamodule.batch_size
    return DataLoader(data, batch_size=datamodule.batch_size, shuffle=shuffle, num_workers=datamodule.num_workers,
                      drop_last=drop_last)  # Dassl's rule (see FewShotDataModule's drop_last)
