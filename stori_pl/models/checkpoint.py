"""Checkpoint files that survive faults: atomic writes, safe reads, clear errors naming a way out, and the one
loader of every stori-pl checkpoint (:func:`load_checkpoint`).

Why here (in models/ and not lower): only the models read checkpoints (everything above loads through
:func:`load_checkpoint`), and the loader must know the model classes (:data:`MODEL_CLASSES`, filled by
:class:`CheckpointLoading` when each class is defined).

- :func:`load_checkpoint` returns the class the checkpoint's ``"stori"`` entry names (SToRI, TaskRes, CoOp,
  IntCoOp, Tip-Adapter, linear probe, zero-shot, sparse autoencoder), optionally refusing other classes
  (``expect``); every ``load_from_checkpoint`` of a stori-pl class goes through it.

- :class:`AtomicCheckpointIO` (installed by ``StoriCLI``) writes each checkpoint to a temporary file in the
  checkpoint's own folder, fsyncs it and renames it over the target (``os.replace``), so a full disk, a
  crash or a kill during the write leaves the previous ``last.ckpt`` intact. It reads with
  ``weights_only=True`` whatever Lightning asks for, so a checkpoint cannot run code when loaded.
- :func:`read_checkpoint` loads a checkpoint the same way; a file that cannot be read (truncated, empty,
  random bytes, a pickle payload) raises :class:`UnreadableCheckpointError` saying
  ``not a readable stori-pl checkpoint (truncated or corrupt): PATH`` and listing the readable
  checkpoints of the same run to use instead.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from stori_pl.utils import atomic_write

CHECKPOINT_SUFFIX = ".ckpt"


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that ``torch.load(weights_only=True)`` cannot read."""


class CheckpointWriteError(OSError, ValueError):
    """Writing a checkpoint failed (e.g. the disk is full); the previous file of that name is unchanged."""


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _load(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain data; every failure becomes one exception type."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, IndexError, UnpicklingError...
        if path.is_file() and path.stat().st_size == 0:
            reason = "empty file"
        elif isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            reason = "it holds Python objects other than tensors and plain data; refused to unpickle them"
        else:
            reason = _describe(err)
        raise _Unreadable(reason) from err


class _Unreadable(Exception):
    """Internal: the reason a file could not be read."""


def readable_checkpoints(folder: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The ``*.ckpt`` files of ``folder`` that load (newest first), leaving out ``exclude``.

    Args:
        folder: A run's ``checkpoints/`` folder.
        exclude: A path to leave out (the unreadable one).
    """
    folder = Path(folder)
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in sorted(folder.glob(f"*{CHECKPOINT_SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True):
        if skip is not None and path.resolve() == skip:
            continue
        with contextlib.suppress(_Unreadable, OSError):
            if isinstance(_load(path), dict):
                found.append(path)
    return found


def unreadable_message(path: str | os.PathLike, reason: str) -> str:
    """The error text for an unreadable checkpoint: the path, the reason, and the run's readable checkpoints."""
    path = Path(path)
    others = readable_checkpoints(path.parent, exclude=path)
    if others:
        hint = ("; readable checkpoints of this run: " + ", ".join(str(p) for p in others)
                + f". Resume or test from one of them (--ckpt_path {others[0]})")
    else:
        hint = f"; no other readable checkpoint in {path.parent}: train again (fit without --ckpt_path)"
    return f"not a readable stori-pl checkpoint (truncated or corrupt): {path} ({reason}){hint}"


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain data only: no code runs).

    Args:
        path: The ``.ckpt`` file.
        map_location: As for :func:`torch.load`.

    Returns:
        The checkpoint dictionary.

    Raises:
        FileNotFoundError: no such file.
        UnreadableCheckpointError: (a ``ValueError``) the file is truncated, empty, not a checkpoint, or
            holds pickled objects other than tensors and plain data; the message lists the readable
            checkpoints of the same folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found (fit writes runs/<name>/version_N/checkpoints/*.ckpt)")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder, not a .ckpt file")
    try:
        ckpt = _load(path, map_location)
    except _Unreadable as err:
        raise UnreadableCheckpointError(unreadable_message(path, str(err))) from err.__cause__
    if not isinstance(ckpt, dict):
        raise UnreadableCheckpointError(unreadable_message(path, f"holds a {type(ckpt).__name__}, not a dict"))
    return ckpt


def check_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Raise :func:`read_checkpoint`'s errors, and one line for a class path that no longer exists, now
    (before a run loads models and data); returns the checkpoint."""
    ckpt = read_checkpoint(path)
    for section in ("hyper_parameters", "datamodule_hyper_parameters"):
        class_path = (ckpt.get(section) or {}).get("_class_path")
        if class_path and not _importable(str(class_path)):
            raise ValueError(
                f"{path} names the class {class_path}, which this stori-pl does not have (it was moved or removed "
                f"after stori-pl {(ckpt.get('stori') or {}).get('stori_pl_version', '?')} wrote the checkpoint): "
                "load it with that stori-pl version, or train it again")
    return ckpt


def _importable(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


MODEL_CLASSES: dict[str, type] = {}
"""stori-pl's LightningModules by class name (what a checkpoint's ``"stori"`` entry records)."""


def checkpoint_class(ckpt: dict[str, Any], path: str | os.PathLike) -> type:
    """The class a checkpoint's ``"stori"`` entry names.

    Raises:
        ValueError: No ``"stori"`` entry, or a model class this stori-pl does not have.
    """
    info = ckpt.get("stori") or {}
    name = info.get("model")
    if not name:
        raise ValueError(f"{path} is not a stori-pl checkpoint (no 'stori' entry naming its model); was it "
                         "written by another program?")
    if name not in MODEL_CLASSES:
        raise ValueError(
            f"{path} holds a {name} model, which this stori-pl does not have (written by stori-pl "
            f"{info.get('stori_pl_version', '?')}): load it with that version, or train it again; models here: "
            + ", ".join(sorted(n for n in MODEL_CLASSES if n != "ClipClassifier")))
    return MODEL_CLASSES[name]


def load_checkpoint(path: str | os.PathLike, expect: type | tuple[type, ...] | None = None,
                    map_location: Any = "cpu", **kwargs: Any) -> Any:
    """Load any stori-pl checkpoint as the class it names, in eval mode, reading with ``weights_only=True``.

    Args:
        path: The ``.ckpt`` file.
        expect: A class (or tuple of classes) the model must be an instance of (``StoriClassifier``,
            ``ClipClassifier`` for any classifier, ``SparseAutoencoder``); None: any stori-pl model.
        map_location: As for :func:`torch.load`.
        **kwargs: Hyperparameters to override (``pretrained="..."``) and Lightning's ``strict`` /
            ``hparams_file``.

    Returns:
        The model (a :class:`CheckpointLoading` subclass), in eval mode.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable (:class:`UnreadableCheckpointError`), not a stori-pl checkpoint, a class this
            stori-pl does not have, not an ``expect`` class, or a checkpoint that does not fit its class —
            each one line naming the file.
    """
    ckpt = check_checkpoint(path)
    cls = checkpoint_class(ckpt, path)
    if expect is not None and not issubclass(cls, expect):
        names = " or ".join(c.__name__ for c in (expect if isinstance(expect, tuple) else (expect,)))
        raise ValueError(f"{path} holds a {cls.__name__} model, not a {names}")
    return cls.lightning_load(path, map_location=map_location, **kwargs).eval()


class CheckpointLoading:
    """Mixin of stori-pl's LightningModules: registers the class in :data:`MODEL_CLASSES`, and makes
    ``load_from_checkpoint`` go through :func:`load_checkpoint` (``weights_only=True``, one clear line for a bad
    file, the class the checkpoint names as long as it is a subclass of the one asked for)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MODEL_CLASSES[cls.__name__] = cls

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool | None = True, **kwargs: Any):
        """Lightning's ``load_from_checkpoint`` through :func:`load_checkpoint` (``expect=cls``); a URL or an
        open file goes to Lightning directly (still ``weights_only=True``)."""
        if weights_only is False:
            raise ValueError("stori-pl checkpoints hold tensors and plain data only: load with weights_only=True")
        if hparams_file is not None:
            kwargs["hparams_file"] = hparams_file
        if strict is not None:
            kwargs["strict"] = strict
        if not isinstance(checkpoint_path, (str, os.PathLike)) or "://" in str(checkpoint_path):
            return cls.lightning_load(checkpoint_path, map_location=map_location, **kwargs)
        return load_checkpoint(checkpoint_path, expect=cls, map_location=map_location, **kwargs)

    @classmethod
    def lightning_load(cls, checkpoint_path: Any, map_location: Any = None, **kwargs: Any):
        """Lightning's own ``load_from_checkpoint`` with ``weights_only=True`` (no checks of ours)."""
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, weights_only=True, **kwargs)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic writes in the target folder, ``weights_only=True`` reads.

    A write goes to a temporary file next to the target, is fsynced, and replaces the target in one
    ``os.replace``; on any failure (full disk, kill) the temporary file is removed or left as a hidden
    ``.<name>.*.tmp`` file and the previous checkpoint stays as it was.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (``storage_options`` is not supported)."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        try:
            with atomic_write(path, "wb") as f:
                torch.save(checkpoint, f)
        except OSError as err:
            msg = (f"could not write checkpoint {path} ({_describe(err)}); the previous file of that name, if "
                   "any, is unchanged. Free disk space and resume with --ckpt_path last")
            raise (CheckpointWriteError(err.errno, msg) if err.errno else CheckpointWriteError(msg)) from err

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """:func:`read_checkpoint` (always ``weights_only=True``, whatever ``weights_only`` says)."""
        return read_checkpoint(path, map_location if map_location is not None else "cpu")


__all__ = [
    "AtomicCheckpointIO",
    "CheckpointLoading",
    "MODEL_CLASSES",
    "checkpoint_class",
    "load_checkpoint",
    "CheckpointWriteError",
    "UnreadableCheckpointError",
    "check_checkpoint",
    "read_checkpoint",
    "readable_checkpoints",
    "unreadable_message",
]
