"""Training data of a sparse autoencoder: cached CLS residual-stream activations of many images.

:class:`ActivationData` turns a set of images into ``[N, d]`` activations (the CLS token after one vision
block; :func:`stori_pl.data.features.cls_activations`, encoded once and cached beside the feature cache) and
serves them in batches ``[B, d]``, split into train / val by a seeded permutation. Images come from

- ``images: NAME`` of a registered image source (:data:`IMAGE_SOURCES`): ``toy`` (registered by
  :mod:`stori_pl.toy`) generates ``n_images`` toy images with random attributes under ``root`` (toy images are
  free, so an SAE sees thousands, not the few-shot split), or
- ``images: /path/to/folder`` — every image under a folder (e.g. ImageNet's ``train/``), optionally a seeded
  random subset of ``max_images``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from stori_pl.data.features import cls_activations, list_images

__all__ = ["ActivationData", "IMAGE_SOURCES"]

ImageSource = Callable[["ActivationData"], tuple[list[Path], list[dict[str, str]] | None]]
IMAGE_SOURCES: dict[str, ImageSource] = {}
"""Named image sources, ``name -> fn(datamodule) -> (paths, per-image attributes or None)``; a package
registers its own (``stori_pl.toy`` adds ``"toy"``, importing it is enough)."""


class ActivationData(L.LightningDataModule):
    """CLS activations of many images for ``stori fit`` of a :class:`stori_pl.models.sae.SparseAutoencoder`.

    Args:
        images: A name in :data:`IMAGE_SOURCES` (``"toy"``: generated toy images) or a folder of images.
        clip_model: open_clip model (linked from the model by ``stori fit``).
        pretrained: Its weights (linked from the model).
        block: Vision block whose CLS output is read (1-indexed, -1 = last); must equal the model's.
        n_images: Toy images to generate (``images: toy`` only).
        max_images: Use a seeded random subset of this many images of a folder (None: all).
        val_fraction: Share of the images held out for validation (and ``stori test``).
        root: Where the toy images are written (``<root>/toy_images_n<N>_seed<S>``).
        seed: Seed of the toy images, the subset and the train/val split.
        batch_size: Activations per training step.
        num_workers: Image decoding workers while encoding (once).
        cache_dir: Cache folder (None: ``$STORI_CACHE`` or ``~/.cache/stori_pl``).
    """

    def __init__(self, images: str = "toy", clip_model: str = "stori-toy", pretrained: str | None = "builtin",
                 block: int = -1, n_images: int = 4000, max_images: int | None = None, val_fraction: float = 0.1,
                 root: str = "data", seed: int = 0, batch_size: int = 256, num_workers: int = 0,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.images, self.clip_model, self.pretrained, self.block = images, clip_model, pretrained, block
        self.n_images, self.max_images, self.val_fraction = n_images, max_images, val_fraction
        self.root, self.seed, self.batch_size = root, seed, batch_size
        self.num_workers, self.cache_dir = num_workers, cache_dir
        self.paths: list[Path] = []
        self.attributes: list[dict[str, str]] | None = None  # toy images: each image's attributes
        self.split: dict[str, torch.Tensor] = {}  # "train"/"val" -> indices into paths

    def image_paths(self) -> list[Path]:
        """The images (made first by a registered source such as ``toy``), in a fixed order."""
        if self.images in IMAGE_SOURCES:
            paths, self.attributes = IMAGE_SOURCES[self.images](self)
            return paths
        if not Path(self.images).expanduser().is_dir():
            known = ", ".join(sorted(IMAGE_SOURCES)) or "none registered; import stori_pl.toy for 'toy'"
            raise FileNotFoundError(f"image folder not found: {self.images} (nor a name of an image source: {known})")
        paths = list_images(self.images)
        if not paths:
            raise FileNotFoundError(f"no images found under {self.images}")
        if self.max_images is not None and len(paths) > self.max_images:
            keep = sorted(random.Random(self.seed).sample(range(len(paths)), self.max_images))
            paths = [paths[i] for i in keep]
        return paths

    def prepare_data(self) -> None:
        """Write the toy images and encode the activations into the cache (once)."""
        self.activations()

    def activations(self) -> torch.Tensor:
        """``[N, d]`` CLS activations of :meth:`image_paths` (from the cache after the first call)."""
        self.paths = self.image_paths()
        return cls_activations(self.paths, self.clip_model, self.pretrained, self.block, self.cache_dir,
                               num_workers=self.num_workers, progress=False)

    def setup(self, stage: str | None = None) -> None:
        acts = self.activations()  # [N, d]
        n = acts.shape[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_val = max(1, round(n * self.val_fraction))
        self.split = {"val": order[:n_val].sort().values, "train": order[n_val:].sort().values}
        self.data = {part: TensorDataset(acts[idx]) for part, idx in self.split.items()}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data["train"], batch_size=self.batch_size, shuffle=True, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data["val"], batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        """The val split (an SAE has no separate test images)."""
        return self.val_dataloader()
