"""CLIP image features, encoded once and reused from an on-disk cache in every later run.

:func:`image_features` looks the paths up in the cache (:mod:`stori_pl.data.feature_cache`: key, file,
checksum, validation) and encodes only on a miss; unreadable or missing images raise :class:`BadImageError`
naming them, or are skipped with a warning (``skip_bad_images``). Files are written atomically (mode
``0o666 & ~umask``); an invalid cache file is reported in a warning naming it and re-encoded. Pure torch
(no Lightning): ``stori cache`` runs the same encoding under a Lightning Trainer for multi-GPU work (see
:mod:`stori_pl.data.parallel_encoding`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from stori_pl.data.feature_cache import (
    FORMAT_VERSION,
    cache_file,
    cache_problems,
    feature_key,
    load_cached,
    save_cached,
    tensor_checksum,
)
from stori_pl.data.image_io import BadImageError, open_rgb
from stori_pl.image.tower import cls_activation, resolve_block
from stori_pl.text.clip import load_clip

__all__ = [
    "FORMAT_VERSION", "IMAGE_EXTENSIONS", "BadImageError", "ImageFolderDataset", "ImagePathDataset",
    "augment_transform", "autocast_for", "bad_image_error", "cache_file", "cache_problems", "cls_activations",
    "collate_images", "encode_batch", "encode_cls_batch", "encode_paths", "feature_key", "image_features",
    "list_images", "load_cached", "save_cached",
    "tensor_checksum", "warn_skipped_images",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


AUGMENT_SCALE = (0.08, 1.0)  # Dassl's INPUT.RRCROP_SCALE, used by CoOp and TaskRes


class ImagePathDataset(Dataset):
    """Images from a list of paths; item = (image tensor, index, readable flag).

    Args:
        paths: Image files.
        transform: Eval transform (CLIP ``preprocess``) -> [3, H, W].
        views: Extra random augmented views per image (Tip-Adapter style); the item is then [1+V, 3, H, W]
            with the plain view first. Each view uses a seed derived from (index, view), so it is reproducible.
        augment: Transform for the augmented views (default: :func:`augment_transform` of ``transform``).
        augment_scale: Crop scale range of the default augmentation (Dassl: (0.08, 1); Tip-Adapter: (0.5, 1)).
    """

    def __init__(self, paths: Sequence[str | Path], transform: Callable, views: int = 0, augment=None,
                 augment_scale: tuple[float, float] = AUGMENT_SCALE):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.views = views
        self.augment = augment if augment is not None or views == 0 else augment_transform(transform, augment_scale)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            im = open_rgb(self.paths[i])  # every PIL mode to RGB, bombs refused (data/image_io.py)
            x = self.transform(im)  # [3, H, W]
            if self.views:
                aug = []
                for v in range(self.views):
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(i * 1009 + v)
                        aug.append(self.augment(im))
                x = torch.stack([x, *aug])  # [1+V, 3, H, W]
            return x, i, True
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad image
            log.debug("cannot read %s: %s", self.paths[i], e)
            return None, i, False


def collate_images(batch):
    """Stack readable images; returns (images [B', ...] | None, indices [B'] long, bad indices list)."""
    good = [(x, i) for x, i, ok in batch if ok]
    bad = [i for _, i, ok in batch if not ok]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, torch.tensor([i for _, i in good], dtype=torch.long), bad


def augment_transform(preprocess: Callable, scale: tuple[float, float] = AUGMENT_SCALE) -> Callable:
    """Random-resized-crop (bicubic, crop area ``scale`` of the image) + flip version of an open_clip eval
    transform (same size, mean and std)."""
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    size = next((t.size for t in steps if isinstance(t, T.CenterCrop)), (224, 224))
    rest = [t for t in steps if not isinstance(t, (T.Resize, T.CenterCrop))]
    crop = T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose([crop, T.RandomHorizontalFlip(), *rest])


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Sorted image files (by extension, case-insensitive) under ``folder``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class ImageFolderDataset:
    """All images under a folder, with cached CLIP features (for retrieval over arbitrary folders).

    Example::

        ds = ImageFolderDataset("photos/")
        feats, paths = ds.features("ViT-B-32", "openai")  # [N, D], the paths that were readable
    """

    def __init__(self, root: str | Path, recursive: bool = True):
        self.root = Path(root).expanduser()
        self.paths = list_images(self.root, recursive)
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}")

    def __len__(self) -> int:
        return len(self.paths)

    def features(self, clip_model: str, pretrained: str | None, **kwargs) -> tuple[torch.Tensor, list[Path]]:
        """Cached features of the readable images; kwargs as :func:`image_features`. Returns ([N, D], paths)."""
        kwargs.setdefault("skip_bad_images", True)
        feats, kept = image_features(self.paths, clip_model, pretrained, **kwargs)
        return feats, [self.paths[i] for i in kept]


def autocast_for(device: torch.device):
    """bf16 (or fp16) autocast on CUDA, nothing elsewhere."""
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def encode_batch(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[B, 3, H, W] or [B, V, 3, H, W] -> L2-normalized float32 [B, D] or [B, V, D] (on the CPU)."""
    shape = images.shape
    flat = images.reshape(-1, *shape[-3:]).to(device, non_blocking=True)  # [B*V, 3, H, W]
    with autocast_for(device):
        feats = model.encode_image(flat)  # [B*V, D]
    feats = F.normalize(feats.float(), dim=-1).cpu()
    return feats.reshape(*shape[:-3], feats.shape[-1])


@torch.no_grad()
def encode_cls_batch(model: torch.nn.Module, images: torch.Tensor, device: torch.device, block: int) -> torch.Tensor:
    """[B, 3, H, W] -> the CLS residual after vision ``block`` (1-indexed), float32 [B, d] on the CPU, not
    normalized (:func:`stori_pl.image.tower.cls_activation`)."""
    with autocast_for(device):
        acts = cls_activation(model, images.to(device, non_blocking=True), block)  # [B, d]
    return acts.float().cpu()


def bad_image_error(paths: Sequence[str], bad: Sequence[int]) -> BadImageError:
    """The error for unreadable or missing images: names the first five and says how to go on.

    Args:
        paths: All input paths.
        bad: Indices into ``paths`` of the images that could not be read (decoding failed or no such file).
    """
    first = ", ".join(str(paths[i]) for i in bad[:5])
    return BadImageError(
        f"cannot read {len(bad)} image(s) (missing or not a readable image): {first}"
        f"{' ...' if len(bad) > 5 else ''}. "
        "Replace or delete the file(s), or set skip_bad_images: true to skip them with a warning."
    )


def warn_skipped_images(paths: Sequence[str], bad: Sequence[int], stacklevel: int = 2) -> None:
    """Warn that the images ``paths[i] for i in bad`` were skipped (``skip_bad_images``); names the first five."""
    first = ", ".join(str(paths[i]) for i in bad[:5])
    warnings.warn(f"cannot read {len(bad)} image(s) (missing or not a readable image): {first}"
                  f"{' ...' if len(bad) > 5 else ''}; skipped", stacklevel=stacklevel + 1)


def encode_paths(
    model: torch.nn.Module,
    preprocess: Callable,
    paths: Sequence[str],
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    skip_bad_images: bool = False,
    views: int = 0,
    augment_scale: tuple[float, float] = AUGMENT_SCALE,
    progress: bool = True,
    desc: str = "encoding",
    block: int | None = None,
) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """Encode images with ``model`` on ``device`` (no cache); the model is moved back afterwards.

    Args:
        model: open_clip model (``encode_image``).
        preprocess: Its eval transform.
        paths: Image files.
        device: Where to encode.
        batch_size, num_workers, views, augment_scale, progress: As for :func:`image_features`.
        skip_bad_images: Collect unreadable or missing images instead of raising :class:`BadImageError`.
        desc: Progress-bar label.
        block: Encode the CLS residual after this vision block (1..n, :func:`encode_cls_batch`) instead of the
            normalized image embedding.

    Returns:
        ``(chunks, kept, bad)``: feature chunks (``[b, D]`` or ``[b, 1+V, D]``, concatenating to the ``kept``
        images in order) and the indices of the images that were read / could not be read.
    """
    from tqdm.auto import tqdm

    loader = DataLoader(ImagePathDataset(paths, preprocess, views, augment_scale=augment_scale), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_images, pin_memory=device.type == "cuda")
    original = next(model.parameters()).device
    model.to(device)
    chunks, kept, bad = [], [], []
    try:
        with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for images, idx, bad_idx in loader:
                if bad_idx and not skip_bad_images:
                    raise bad_image_error(paths, bad_idx)
                bad.extend(bad_idx)
                if images is not None:
                    chunks.append(encode_batch(model, images, device) if block is None
                                  else encode_cls_batch(model, images, device, block))
                    kept.extend(idx.tolist())
                bar.update(len(idx) + len(bad_idx))
    finally:
        model.to(original)
    return chunks, kept, bad


def image_features(
    paths: Sequence[str | Path],
    clip_model: str,
    pretrained: str | None,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    skip_bad_images: bool = False,
    views: int = 0,
    augment_scale: tuple[float, float] = AUGMENT_SCALE,
    progress: bool = True,
    block: int | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """CLIP image features of ``paths``, from the cache or encoded once and cached.

    Args:
        paths: Image files.
        clip_model: open_clip model name (e.g. ``"ViT-L-14"``).
        pretrained: Its weights (tag, file or None), as for :func:`stori_pl.text.clip.load_clip`.
        cache_dir: Cache folder (default ``$STORI_CACHE`` or ``~/.cache/stori_pl``).
        batch_size: Images per encoder call.
        num_workers: DataLoader workers decoding images.
        device: Where to encode (default: CUDA when available); fp16/bf16 autocast on CUDA only.
        skip_bad_images: Skip unreadable or missing images with a warning instead of raising
            :class:`BadImageError`.
        views: Extra augmented views per image (then features are [N, 1+views, D]); each is a seeded
            random-resized-crop + flip, so the cache is reproducible.
        augment_scale: Crop scale range of the views (Dassl, for CoOp / TaskRes: (0.08, 1); Tip-Adapter: (0.5, 1)).
        progress: Show a progress bar while encoding.
        block: Cache the CLS residual-stream activation after this vision block (1-indexed, negative from the
            end) instead of the image embedding: ``[N, d]``, not normalized (needs ``views=0``).

    Returns:
        ``(features [N, D] float32 L2-normalized, kept)``: ``kept`` lists the indices of ``paths`` that
        were readable (all of them unless ``skip_bad_images`` skipped some); ``features[j]`` is ``paths[kept[j]]``.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("image_features: no image paths given")
    model, preprocess, _ = load_clip(clip_model, pretrained)
    block = checked_block(model, block, views)
    key = feature_key(paths, clip_model, pretrained, preprocess, views, model, augment_scale, block)
    path = cache_file(key, cache_dir)
    cached = load_cached(path, key, len(paths), require_all=not skip_bad_images)
    if cached is not None:
        return cached
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chunks, kept, bad = encode_paths(
        model, preprocess, paths, device=device, batch_size=batch_size, num_workers=num_workers,
        skip_bad_images=skip_bad_images, views=views, augment_scale=augment_scale, progress=progress,
        desc=f"encoding {len(paths)} images ({clip_model}{'' if block is None else f', block {block}'})", block=block)
    if bad:
        warn_skipped_images(paths, bad, stacklevel=2)
    feats = save_encoded(path, key, chunks, kept, paths, info=f"{clip_model}|{pretrained}|"
                         + (f"views={views}" if block is None else f"cls_activation@block{block}"))
    return feats, kept


def checked_block(model, block: int | None, views: int) -> int | None:
    """``block`` resolved on ``model`` (1-indexed; negative from the end), or None for image embeddings.

    Raises:
        ValueError: A block with augmented views (CLS activations are cached for the plain view only).
    """
    if block is None:
        return None

    block = resolve_block(model, block)
    if views:
        raise ValueError("CLS activations are cached for the plain view only: use views=0 with block")
    return block


def save_encoded(path: Path, key: str, chunks: list[torch.Tensor], kept: list[int], paths: list[str],
                 info: str) -> torch.Tensor:
    """Concatenate encoded batches and cache them (see :func:`save_cached`).

    Args:
        path: The cache file.
        key: Its content key.
        chunks: Encoded batches ``[b, D]`` or ``[b, 1+V, D]``.
        kept: Indices of the readable ``paths``.
        paths: All image paths.
        info: A readable description stored with the entry.

    Returns:
        ``[N', D]`` or ``[N', 1+V, D]``.

    Raises:
        BadImageError: No image could be read.
    """
    if not chunks:
        raise BadImageError(f"none of the {len(paths)} images could be read (first: {paths[:3]})")
    feats = torch.cat(chunks)  # [N', D] or [N', 1+V, D]
    try:
        save_cached(path, key, feats, kept, len(paths), info=info)
    except OSError as err:  # a read-only, full or missing cache folder: use the features, say so once
        warnings.warn(f"could not write the feature cache {path} ({err.strerror or err}); the features of these "
                      f"{len(paths)} images are used now but will be encoded again next time (set STORI_CACHE or "
                      "--cache_dir to a writable folder)", CacheWriteWarning, stacklevel=2)
    return feats


class CacheWriteWarning(UserWarning):
    """The feature cache could not be written; the run continues with the features it encoded."""


warnings.filterwarnings("once", category=CacheWriteWarning, append=True)  # one warning per cache folder


def cls_activations(
    paths: Sequence[str | Path],
    clip_model: str,
    pretrained: str | None,
    block: int,
    cache_dir: str | Path | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """The CLS residual-stream activation after vision ``block`` for every image, cached like the features.

    Encoded once per (model, block, files) and stored beside the feature cache (same file format, key and
    checksums; :func:`image_features` with ``block``).

    Args:
        paths: Image files.
        clip_model: open_clip model name.
        pretrained: Its weights (tag, file, ``"builtin"`` or None).
        block: 1-indexed vision block, or negative from the end (``-1`` = last; the authors' ``layer_idx``).
        cache_dir: Cache folder (default ``$STORI_CACHE`` or ``~/.cache/stori_pl``).
        batch_size, num_workers, device, progress: As for :func:`image_features`.

    Returns:
        ``[N, d]`` float32 (``d`` = the vision width, 768 for ViT-B), row ``i`` = ``paths[i]``.

    Raises:
        BadImageError: an image is missing or unreadable (the message names it).
        ValueError: ``block`` outside the tower.
    """
    acts, _ = image_features(paths, clip_model, pretrained, cache_dir=cache_dir, batch_size=batch_size,
                             num_workers=num_workers, device=device, progress=progress, block=block)
    return acts
