"""Encoding images into the feature cache with ``Trainer.predict``, so that several GPUs share the work (``stori
cache --devices 4``): each rank writes its share to a shard, rank 0 merges the shards into the same cache file
``stori fit`` reads (:mod:`stori_pl.data.features`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from stori_pl.data import features
from stori_pl.image.tower import resolve_block
from stori_pl.text.clip import load_clip

__all__ = ["ImageEncoder", "ShardWriter", "encode_with_trainer"]


class ImageEncoder(L.LightningModule):
    """Frozen CLIP image encoder for ``Trainer.predict``: batch -> normalized features (+ indices); with
    ``block`` (1..n) the CLS residual after that vision block instead."""

    def __init__(self, clip_model: str, pretrained: str | None, block: int | None = None):
        super().__init__()
        self.clip, self.preprocess, _ = load_clip(clip_model, pretrained)
        self.block = block

    def predict_step(self, batch, batch_idx):
        images, indices, bad = batch
        if images is None:
            feats = None
        elif self.block is None:
            feats = features.encode_batch(self.clip, images, self.device)
        else:
            feats = features.encode_cls_batch(self.clip, images, self.device, self.block)
        return {"features": feats, "indices": indices, "bad": torch.tensor(bad, dtype=torch.long)}


class ShardWriter(BasePredictionWriter):
    """Writes each rank's predictions to ``<folder>/rank<r>.safetensors``."""

    def __init__(self, folder: Path):
        super().__init__(write_interval="epoch")
        self.folder = folder

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        preds = [p for p in predictions if p["features"] is not None]
        empty = torch.zeros(0, dtype=torch.long)
        out = {"indices": torch.cat([p["indices"] for p in preds]) if preds else empty,
               "bad": torch.cat([p["bad"] for p in predictions]) if predictions else empty}
        if preds:
            out["features"] = torch.cat([p["features"] for p in preds])
        self.folder.mkdir(parents=True, exist_ok=True)
        save_file(out, str(self.folder / f"rank{trainer.global_rank}.safetensors"))


def encode_with_trainer(paths, clip_model, pretrained, trainer: L.Trainer, *, cache_dir=None, batch_size=64,
                        num_workers=2, skip_bad_images=False, views=0, augment_scale=features.AUGMENT_SCALE,
                        block: int | None = None) -> bool:
    """Encode ``paths`` into the feature cache with ``trainer`` (all ranks call this). True if it encoded.

    ``block`` (1-indexed, negative from the end): cache the CLS activations after that vision block instead
    (the file :func:`stori_pl.data.features.cls_activations` reads; ``views`` is then ignored)."""
    module = ImageEncoder(clip_model, pretrained)
    if block is not None:
        module.block, views = resolve_block(module.clip, block), 0
    paths = [str(p) for p in paths]
    key = features.feature_key(paths, clip_model, pretrained, module.preprocess, views, module.clip, augment_scale,
                        module.block)
    target = features.cache_file(key, cache_dir)
    if features.load_cached(target, key, len(paths), require_all=not skip_bad_images) is not None:
        return False
    shards = target.parent / f".shards-{key}"
    loader = DataLoader(features.ImagePathDataset(paths, module.preprocess, views, augment_scale=augment_scale), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=features.collate_images)
    trainer.callbacks.append(writer := ShardWriter(shards))
    try:
        trainer.predict(module, loader, return_predictions=False)
    finally:
        trainer.callbacks.remove(writer)
    trainer.strategy.barrier()
    if trainer.global_rank == 0:
        what = f"views={views}" if module.block is None else f"cls_activation@block{module.block}"
        _merge(shards, target, key, paths, skip_bad_images, f"{clip_model}|{pretrained}|{what}")
    trainer.strategy.barrier()
    return True


def _merge(shards: Path, target: Path, key: str, paths: list[str], skip_bad_images: bool, info: str) -> None:
    parts = [load_file(str(p)) for p in sorted(shards.glob("rank*.safetensors"))]
    shutil.rmtree(shards, ignore_errors=True)
    bad = sorted({int(i) for p in parts for i in p["bad"].tolist()})
    if bad and not skip_bad_images:
        raise features.bad_image_error(paths, bad)
    if bad:
        features.warn_skipped_images(paths, bad)
    by_index = {}
    for p in parts:  # distributed samplers pad with repeats: keep one feature per index
        if "features" in p:
            by_index.update(zip(p["indices"].tolist(), p["features"]))
    kept = sorted(by_index)
    features.save_cached(target, key, torch.stack([by_index[i] for i in kept]), kept, len(paths), info)
