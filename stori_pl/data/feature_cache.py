"""Feature cache files: key, location, checksum, validated load and atomic save.

A cache file ``<cache_root>/features/<key>.safetensors`` holds ``features`` ([N, D] or [N, 1+V, D] float32,
L2-normalized; for an activation cache [N, d], the CLS residual after one vision block, not normalized) and ``kept`` ([N] int64, indices of the readable input images); its metadata holds the key,
the format version, the number of input paths and a SHA-256 checksum of both tensors. The key hashes the model
fingerprint, the preprocess transform, the number of augmented views and every path with its size and mtime,
so a changed image or model makes a new key. Encoding lives in :mod:`stori_pl.data.features`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stori_pl.utils import atomic_path, cache_root, content_hash

FORMAT_VERSION = "1"


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def feature_key(paths: Sequence[str | Path], clip_model: str, pretrained: str | None, preprocess, views=0,
                model: torch.nn.Module | None = None, augment_scale: Sequence[float] | None = None,
                block: int | None = None) -> str:
    """Content hash naming a cache file (model, preprocess, views and their crop scale, each path with size
    and mtime; for an activation cache the vision block, 1-indexed — None, the embedding cache, leaves the key
    as before)."""
    from stori_pl.text.clip import model_fingerprint

    fingerprint = model_fingerprint(clip_model, pretrained)
    if pretrained is None and model is not None:  # random init: the weights themselves identify it
        fingerprint += "|" + _weights_digest(model.visual)
    files = []
    for p in paths:
        try:
            st = os.stat(p)
            files.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((os.path.abspath(p), -1, -1))
    augment = [int(views)] + ([float(x) for x in augment_scale] if views and augment_scale is not None else [])
    target = [] if block is None else [f"cls_activation@{int(block)}"]
    return content_hash(FORMAT_VERSION, fingerprint, repr(preprocess), *augment, *target, files, length=24)


def cache_file(key: str, cache_dir: str | Path | None = None) -> Path:
    """Path of the cache file for ``key``."""
    return cache_root(cache_dir) / "features" / f"{key}.safetensors"


def tensor_checksum(feats: torch.Tensor, kept: torch.Tensor) -> str:
    """SHA-256 (hex) of the raw bytes, dtypes and shapes of ``feats`` and ``kept`` (stored in the metadata).

    Args:
        feats: ``[N, D]`` or ``[N, 1+V, D]`` features (CPU).
        kept: ``[N]`` int64 indices.
    """
    h = hashlib.sha256()
    for t in (feats, kept):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


def cache_problems(meta: dict, feats: torch.Tensor, kept: torch.Tensor, key: str, n_paths: int,
                   require_all: bool = False) -> list[str]:
    """What is wrong with a cache file's content (empty list: valid); arguments as :func:`load_cached`."""
    problems = []
    if meta.get("key") != key or meta.get("format") != FORMAT_VERSION:
        problems.append("key/format mismatch")
    if int(meta.get("count", -1)) != n_paths:
        problems.append(f"count {meta.get('count')} != {n_paths}")
    if feats.dtype != torch.float32 or feats.ndim not in (2, 3) or feats.shape[0] != kept.numel():
        problems.append(f"bad shape {tuple(feats.shape)} for {kept.numel()} kept images")
    elif kept.dtype != torch.long or kept.ndim != 1:
        problems.append(f"bad kept indices {kept.dtype} {tuple(kept.shape)}")
    elif "sha256" not in meta:
        problems.append("no checksum (written by stori-pl < 0.2)")
    elif meta["sha256"] != tensor_checksum(feats, kept):
        problems.append("checksum mismatch: the stored values were changed after writing")
    elif kept.numel() and (kept.min() < 0 or kept.max() >= n_paths or not bool((kept.diff() > 0).all())):
        problems.append("kept indices out of range or unsorted")
    elif not torch.isfinite(feats).all():
        problems.append("non-finite values")
    elif require_all and kept.numel() != n_paths:
        problems.append(f"{n_paths - kept.numel()} image(s) were skipped when it was written")
    return problems


def load_cached(
    path: Path, key: str, n_paths: int, require_all: bool = False
) -> tuple[torch.Tensor, list[int]] | None:
    """Load and validate a cache file; None (with a warning when the file exists but is bad) to recompute.

    Args:
        path: The cache file (:func:`cache_file`).
        key: Its expected key (:func:`feature_key`).
        n_paths: Number of input paths the file must describe.
        require_all: A file that skipped images (written with ``skip_bad_images``) does not count.

    Returns:
        ``(features [N', ...], kept)`` or None when the file is absent or invalid (see :func:`cache_problems`;
        a warning names the file and the problem).
    """
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            feats, kept = f.get_tensor("features"), f.get_tensor("kept")
        problems = cache_problems(meta, feats, kept, key, n_paths, require_all)
    except Exception as e:  # noqa: BLE001 - unreadable file = stale
        problems = [f"unreadable ({e})"]
    if problems:
        warnings.warn(f"feature cache {path} is invalid ({'; '.join(problems)}); re-encoding", stacklevel=3)
        return None
    return feats, kept.tolist()


def save_cached(
    path: Path, key: str, feats: torch.Tensor, kept: Sequence[int], n_paths: int, info: str = ""
) -> None:
    """Write a cache file atomically, with a checksum of its tensors in the metadata.

    Args:
        path: Destination (:func:`cache_file`).
        key: Cache key (:func:`feature_key`).
        feats: ``[N', D]`` or ``[N', 1+V, D]`` float32 features of the kept images.
        kept: ``N'`` indices into the input paths.
        n_paths: Number of input paths.
        info: Free text (model, views) for people inspecting the file.
    """
    tensors = {"features": feats.detach().cpu().contiguous(), "kept": torch.tensor(list(kept), dtype=torch.long)}
    meta = {"key": key, "format": FORMAT_VERSION, "count": str(n_paths), "info": info,
            "sha256": tensor_checksum(tensors["features"], tensors["kept"])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
