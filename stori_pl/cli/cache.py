"""``stori cache --config x.yaml``: encode a benchmark's images into the feature cache under Lightning.

Uses ``Trainer.predict`` so several GPUs split the work (``--devices 4``); each rank writes its share to a
shard, rank 0 merges the shards into the same cache file ``stori fit`` reads (see :mod:`stori_pl.data.features`).
Afterwards ``stori fit/test`` with the same config encodes no image.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from stori_pl.data import features as F


class ImageEncoder(L.LightningModule):
    """Frozen CLIP image encoder for ``Trainer.predict``: batch -> normalized features (+ indices)."""

    def __init__(self, clip_model: str, pretrained: str | None):
        super().__init__()
        from stori_pl.text.clip import load_clip

        self.clip, self.preprocess, _ = load_clip(clip_model, pretrained)

    def predict_step(self, batch, batch_idx):
        images, indices, bad = batch
        feats = F.encode_batch(self.clip, images, self.device) if images is not None else None
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
                        num_workers=2, skip_bad_images=False, views=0) -> bool:
    """Encode ``paths`` into the feature cache with ``trainer`` (all ranks call this). True if it encoded."""
    module = ImageEncoder(clip_model, pretrained)
    paths = [str(p) for p in paths]
    key = F.feature_key(paths, clip_model, pretrained, module.preprocess, views, module.clip)
    target = F.cache_file(key, cache_dir)
    if F.load_cached(target, key, len(paths), require_all=not skip_bad_images) is not None:
        return False
    shards = target.parent / f".shards-{key}"
    loader = DataLoader(F.ImagePathDataset(paths, module.preprocess, views), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=F.collate_images)
    trainer.callbacks.append(writer := ShardWriter(shards))
    try:
        trainer.predict(module, loader, return_predictions=False)
    finally:
        trainer.callbacks.remove(writer)
    trainer.strategy.barrier()
    if trainer.global_rank == 0:
        _merge(shards, target, key, paths, skip_bad_images, f"{clip_model}|{pretrained}|views={views}")
    trainer.strategy.barrier()
    return True


def _merge(shards: Path, target: Path, key: str, paths: list[str], skip_bad_images: bool, info: str) -> None:
    parts = [load_file(str(p)) for p in sorted(shards.glob("rank*.safetensors"))]
    shutil.rmtree(shards, ignore_errors=True)
    bad = sorted({int(i) for p in parts for i in p["bad"].tolist()})
    if bad and not skip_bad_images:
        raise F._bad_image_error(paths, bad)
    if bad:
        warnings.warn(str(F._bad_image_error(paths, bad)).split(". Replace")[0] + "; skipped", stacklevel=2)
    by_index = {}
    for p in parts:  # distributed samplers pad with repeats: keep one feature per index
        if "features" in p:
            by_index.update(zip(p["indices"].tolist(), p["features"]))
    kept = sorted(by_index)
    F.save_cached(target, key, torch.stack([by_index[i] for i in kept]), kept, len(paths), info)


def load_config(files: list[str], overrides: dict[str, str] | None = None) -> tuple[type, dict]:
    """Datamodule class and init args from LightningCLI YAML configs (later files override earlier).

    ``overrides``: ``{"data.root": "/data", "model.pretrained": "openai", ...}`` (values parsed as YAML).
    """
    data, model = {}, {}
    for f in files:
        cfg = yaml.safe_load(Path(f).read_text(encoding="utf-8")) or {}
        d, m = cfg.get("data") or {}, cfg.get("model") or {}
        data = {**data, **d, "init_args": {**data.get("init_args", {}), **d.get("init_args", {})}}
        flat = {k: v for k, v in m.items() if k not in ("class_path", "init_args")}  # model: {clip_model: ..}
        model = {**model, **m.get("init_args", {}), **flat}
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        target = {"data": data["init_args"] if name != "class_path" else data, "model": model}.get(section)
        if target is None or not name:
            raise ValueError(f"unknown option --{key} (use --data.<arg> or --model.<arg>)")
        target[name] = yaml.safe_load(value)
    if "class_path" not in data:
        raise ValueError(f"{files}: no data.class_path (e.g. stori_pl.data.DTD) in the config")
    path = data["class_path"] if "." in data["class_path"] else f"stori_pl.data.{data['class_path']}"
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = dict(data["init_args"])
    for k in ("clip_model", "pretrained"):  # linked from the model by `stori fit`
        if k not in args and k in model:
            args[k] = model[k]
    return cls, args


def _overrides(rest: list[str]) -> dict[str, str]:
    out, i = {}, 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(rest):
            key, value, i = arg[2:], rest[i + 1], i + 1
        else:
            raise ValueError(f"option {arg} needs a value")
        out[key] = value
        i += 1
    return out


def main(argv: list[str]) -> int:
    """Entry point of ``stori cache``."""
    parser = argparse.ArgumentParser(
        prog="stori cache", description=__doc__.splitlines()[0],
        epilog="Other options: --data.<arg> VALUE / --model.<arg> VALUE override the config (e.g. --data.root).")
    parser.add_argument("--config", "-c", action="append", required=True,
                        help="LightningCLI YAML, or a shipped config name such as dtd_16shot (repeatable)")
    parser.add_argument("--parts", nargs="+", default=["train", "val", "test"], choices=["train", "val", "test"])
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="auto", help="e.g. 4 to split the work over 4 GPUs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=None, help="image decoding workers (default: data's)")
    args, rest = parser.parse_known_args(argv)
    try:
        from stori_pl.lightning.cli import resolve_config
    except ImportError:  # pragma: no cover
        resolve_config = str
    cls, init_args = load_config([resolve_config(c) for c in args.config], _overrides(rest))
    dm = cls(**init_args)
    if dm.download:
        dm._download()
    trainer = L.Trainer(accelerator=args.accelerator, devices=int(args.devices) if args.devices.isdigit()
                        else args.devices, logger=False, enable_checkpointing=False, enable_model_summary=False)
    workers = dm.num_workers if args.num_workers is None else args.num_workers
    for part, (paths, views) in dm.image_lists(args.parts).items():
        did = encode_with_trainer(paths, dm.clip_model, dm.pretrained, trainer, cache_dir=dm.cache_dir,
                                  batch_size=args.batch_size, num_workers=workers,
                                  skip_bad_images=dm.skip_bad_images, views=views)
        if trainer.global_rank == 0:
            print(f"{cls.__name__} {part}: {len(paths)} images {'encoded' if did else 'already cached'}")
    return 0
