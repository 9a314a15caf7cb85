"""Checkpoint files that survive faults: atomic writes, safe reads, clear errors naming a way out.

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
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder, not a .ckpt file")
    try:
        ckpt = _load(path, map_location)
    except _Unreadable as err:
        raise UnreadableCheckpointError(unreadable_message(path, str(err))) from err.__cause__
    if not isinstance(ckpt, dict):
        raise UnreadableCheckpointError(unreadable_message(path, f"holds a {type(ckpt).__name__}, not a dict"))
    return ckpt


def check_checkpoint(path: str | os.PathLike) -> None:
    """Raise :func:`read_checkpoint`'s errors now (before a run loads models and data)."""
    read_checkpoint(path)


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
    "CheckpointWriteError",
    "UnreadableCheckpointError",
    "check_checkpoint",
    "read_checkpoint",
    "readable_checkpoints",
    "unreadable_message",
]
