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
from typing import Any, Literal

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
        cfg = _plain_yaml(Path(f).read_text(encoding="utf-8"), f"config {f}") or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"config {f} must be a YAML mapping with data: and model: sections")
        d, m = cfg.get("data") or {}, cfg.get("model") or {}
        data = {**data, **d, "init_args": {**data.get("init_args", {}), **d.get("init_args", {})}}
        flat = {k: v for k, v in m.items() if k not in ("class_path", "init_args")}  # model: {clip_model: ..}
        model = {**model, **m.get("init_args", {}), **flat}
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        target = {"data": data["init_args"] if name != "class_path" else data, "model": model}.get(section)
        if target is None or not name:
            raise ValueError(f"unknown option --{key} (use --data.<arg> or --model.<arg>)")
        target[name] = _plain_yaml(value, f"--{key}")
    if "class_path" not in data:
        raise ValueError(f"{files}: no data.class_path (e.g. stori_pl.data.DTD) in the config")
    cls = datamodule_class(data["class_path"])
    args = dict(data["init_args"])
    for k in ("clip_model", "pretrained"):  # linked from the model by `stori fit`
        if k not in args and k in model:
            args[k] = model[k]
    return cls, args


def _plain_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` with its errors (a ``!!python/...`` tag, bad syntax) as one ValueError naming ``where``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{where} is not plain YAML ({first}); Python tags are refused, nothing ran") from None


def datamodule_class(class_path: Any) -> type:
    """The datamodule class a config's ``data.class_path`` names, checked before anything is called.

    A bare name must be one of the shipped datamodules (``DTD``, ..., ``ToyShapes``); a dotted path is imported
    as ``stori fit`` imports it (jsonargparse imports the module of every ``class_path``) and must name a
    :class:`~stori_pl.data.FewShotDataModule` subclass. Anything else (``subprocess.Popen``, ``os.system``, a
    function) is refused here, so a shared config cannot make ``stori cache`` / ``stori attributes`` run code.

    Raises:
        ValueError: Not a shipped datamodule name, not importable, or not a FewShotDataModule subclass.
    """
    import stori_pl.data
    from stori_pl.data.base import FewShotDataModule

    registry = {n: getattr(stori_pl.data, n) for n in stori_pl.data.__all__}
    try:
        from stori_pl.toy.data import ToyShapes

        registry["ToyShapes"] = ToyShapes
    except ImportError:  # pragma: no cover
        pass
    known = sorted(n for n, c in registry.items() if isinstance(c, type) and issubclass(c, FewShotDataModule)
                   and c is not FewShotDataModule)
    if not isinstance(class_path, str) or not class_path.strip():
        raise ValueError(f"data.class_path must be a datamodule name, got {class_path!r}; choose one of: "
                         f"{', '.join(known)}")
    if "." not in class_path:
        cls = registry.get(class_path)
    else:
        module, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError as err:
            raise ValueError(f"data.class_path {class_path!r}: cannot import {module!r} ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, FewShotDataModule) and cls is not FewShotDataModule):
        raise ValueError(f"data.class_path {class_path!r} is not a few-shot datamodule (a FewShotDataModule "
                         f"subclass); refused, nothing was called. Choose one of: {', '.join(known)}")
    return cls


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
