"""``ImageFolder``: every image under a folder, as a prediction-only datamodule (``stori predict``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from stori_pl.data.features import ImageFolderDataset


class _Features(Dataset):
    def __init__(self, features: torch.Tensor):
        self.features = features  # [N, D]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "index": i}


class ImageFolder(L.LightningDataModule):
    """Every image under a folder, for ``stori predict`` (features cached like the benchmarks').

    Args:
        root: Folder of images (searched recursively unless ``recursive`` is false).
        clip_model: open_clip model of the image features (linked from the model by the CLI).
        pretrained: Its weights.
        recursive: Include sub-folders.
        cache_dir: Feature cache folder (None: ``$STORI_CACHE`` or ``~/.cache/stori_pl``).
        batch_size: Features per predict step.
        num_workers: DataLoader workers decoding images while encoding.
        skip_bad_images: Skip unreadable images with a warning (otherwise an error names them).
    """

    def __init__(
        self,
        root: str,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        recursive: bool = True,
        cache_dir: str | None = None,
        batch_size: int = 256,
        num_workers: int = 2,
        skip_bad_images: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.paths: list[Path] = []
        self._features: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise ValueError("ImageFolder has no labels: use it with `stori predict` only")
        if self._features is None:
            hp = self.hparams
            ds = ImageFolderDataset(hp.root, recursive=hp.recursive)
            self._features, self.paths = ds.features(
                hp.clip_model, hp.pretrained, cache_dir=hp.cache_dir, num_workers=hp.num_workers,
                skip_bad_images=hp.skip_bad_images,
            )

    @property
    def predict_paths(self) -> list[Path]:
        """Image of each predicted row, in order."""
        return self.paths

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Features(self._features), batch_size=self.hparams.batch_size, shuffle=False)
