"""Encode a training config's images into the feature cache ahead of `stori fit` (several GPUs share the work).

``--config`` is the training config that ``stori fit`` reads (a file or a shipped name such as
``dtd_16shot``; repeatable, later files override earlier ones), and ``--data.<arg> VALUE`` /
``--model.<arg> VALUE`` override it as they do for ``stori fit``. Its ``data`` section says which images,
its ``model`` section which CLIP. Uses ``Trainer.predict`` so several GPUs split the work
(``--devices 4``); each rank writes its share to a shard, rank 0 merges the shards into the same cache file
``stori fit`` reads (see :mod:`stori_pl.data.features`). Afterwards ``stori fit/test`` with the same config
encodes no image.

Example::

    stori cache --config dtd_16shot.yaml --data.root /path/to/data --devices 4
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Literal

import lightning as L
import yaml

from stori_pl.data.parallel_encoding import encode_with_trainer
from stori_pl.cli.lightning_args import resolve_config

__all__ = ["cache", "load_config"]


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


# A list default (never mutated) rather than a tuple: jsonargparse's `--parts+ X` appends to a list default.
def cache(config: list[str], parts: list[Literal["train", "val", "test"]] = ["train", "val", "test"],  # noqa: B006
          accelerator: str = "auto", devices: int | str = "auto", batch_size: int = 256, num_workers: int | None = None,
          activations_block: int | None = None, overrides: dict[str, str] | None = None) -> int:
    """Encode the images of a training config's datamodule into the feature cache.

    Args:
        config: Training config(s) of `stori fit` (a YAML file or a shipped name such as dtd_16shot; repeatable).
        parts: Splits to encode.
        accelerator: Lightning accelerator (cpu, gpu, auto).
        devices: Devices sharing the work, e.g. 4 GPUs, or auto.
        batch_size: Images per encoder call.
        num_workers: Image decoding workers (default: the config's data.num_workers).
        activations_block: Also cache each image's CLS residual-stream activation after this vision block
            (1-indexed, -1 = last), what a sparse autoencoder reads (docs/components.md).
        overrides: ``{"data.root": "/data", "model.pretrained": "openai", ...}`` (values parsed as YAML).

    Returns:
        Exit status 0.

    Raises:
        ValueError: A config without data.class_path or an override of an unknown section.
    """
    cls, init_args = load_config([resolve_config(c) for c in config], overrides)
    dm = cls(**init_args)
    if init_args.get("download"):
        dm.download_dataset()
    trainer = L.Trainer(accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    workers = dm.num_workers if num_workers is None else num_workers
    for part, (paths, views) in dm.image_lists(parts).items():
        did = encode_with_trainer(paths, dm.clip_model, dm.pretrained, trainer, cache_dir=dm.cache_dir,
                                  batch_size=batch_size, num_workers=workers,
                                  skip_bad_images=dm.skip_bad_images, views=views,
                                  augment_scale=dm.augment_scale)
        if trainer.global_rank == 0:
            print(f"{cls.__name__} {part}: {len(paths)} images {'encoded' if did else 'already cached'}")
        if activations_block is None:
            continue
        did = encode_with_trainer(paths, dm.clip_model, dm.pretrained, trainer, cache_dir=dm.cache_dir,
                                  batch_size=batch_size, num_workers=workers,
                                  skip_bad_images=dm.skip_bad_images, block=activations_block)
        if trainer.global_rank == 0:
            print(f"{cls.__name__} {part}: CLS activations after block {activations_block} "
                  f"{'encoded' if did else 'already cached'}")
    return 0
