"""One image loader for every datamodule and command: any PIL mode to 8-bit RGB, decompression bombs refused.

Every place that reads an image file (the feature cache's :class:`~stori_pl.data.features.ImagePathDataset`,
IntCoOp's image tensors, ``stori retrieve``'s contact sheet, ``stori explain --image``, ``stori components``,
the HTML thumbnails, the BLIP-2 labeller) goes through :func:`open_rgb`, and a PIL image given to a model's
``classify`` through :func:`to_rgb`. ``Image.convert("RGB")`` alone misreads several modes:

- ``I;16`` / ``I;16B`` / ``I;16L`` (16-bit greyscale PNG/TIFF): PIL clips the values at 255, so a mid-grey
  16-bit picture becomes pure white. Here each value is scaled ``v * 255 / 65535``.
- ``I`` (32-bit integers; what older PIL versions and some TIFFs give for 16-bit greyscale): read as 16-bit,
  values clipped to ``0..65535`` and scaled as above.
- ``F`` (32-bit float): ``[0, 1]`` data (the usual float convention) scaled by 255, anything else clipped to
  ``0..255``.
- Transparent modes (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa`` and ``P`` / ``L`` / ``RGB`` with a
  ``transparency`` entry): composited over **white** (as a browser shows them on a page) instead of dropping
  the alpha, which reveals whatever colour the transparent pixels happen to store (often black).
- ``CMYK``, ``YCbCr``, ``1``, ``L``, ``P``, ``HSV``: PIL's own conversion (correct for these).

Plain ``RGB`` / ``L`` / ``P`` images come out exactly as ``convert("RGB")`` made them, so existing feature
caches stay valid. EXIF orientation is not applied (as in Dassl's ``read_image`` and open_clip's loaders).

Decompression bombs: a file whose header claims more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (PIL's default
89.5 M, e.g. 20000×20000) is refused before any pixel is decoded with :class:`ImageTooLargeError`, one line
naming the file and the size (PIL itself only warns up to twice the limit and decodes it). Raise the limit
with ``STORI_MAX_IMAGE_PIXELS`` (a number of pixels) for genuinely huge images.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["BadImageError", "ImageTooLargeError", "open_rgb", "to_rgb", "max_image_pixels"]

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S")
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white
REFUSED = "refused without decoding it (raise the limit with STORI_MAX_IMAGE_PIXELS)"


class BadImageError(RuntimeError, ValueError):
    """An image file could not be read or decoded (a user error: the ``stori`` commands print it as one line)."""


class ImageTooLargeError(BadImageError):
    """An image whose header claims more pixels than the limit (a decompression bomb, or a huge scan)."""


def max_image_pixels() -> int:
    """The pixel limit: ``$STORI_MAX_IMAGE_PIXELS`` if set, else ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485)."""
    env = os.environ.get("STORI_MAX_IMAGE_PIXELS", "").strip()
    if env:
        try:
            limit = int(float(env))
        except ValueError:
            raise ValueError(f"STORI_MAX_IMAGE_PIXELS={env!r} is not a number of pixels") from None
        Image.MAX_IMAGE_PIXELS = limit  # PIL's own check at open (an error at twice the limit) follows it
        return limit
    return int(Image.MAX_IMAGE_PIXELS or 0)


def _check_size(im: Image.Image, path: str | os.PathLike) -> None:
    limit = max_image_pixels()
    w, h = im.size
    if limit and w * h > limit:
        raise ImageTooLargeError(
            f"image {os.fspath(path)} claims {w}x{h} = {w * h:,} pixels, more than the limit {limit:,} "
            f"(a decompression bomb?); {REFUSED}")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Read an image file as an 8-bit ``RGB`` PIL image, whatever its mode (see the module docstring).

    Args:
        path: The image file.

    Returns:
        A loaded ``RGB`` image (the file is closed).

    Raises:
        FileNotFoundError: No such file.
        ImageTooLargeError: More pixels than :func:`max_image_pixels` (nothing decoded).
        BadImageError: Not an image PIL can decode (names the file and PIL's reason).
    """
    path = Path(path)
    max_image_pixels()  # applies $STORI_MAX_IMAGE_PIXELS to PIL's check
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(im, path)
                im.load()
                out = to_rgb(im)
                return im.copy() if out is im else out
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} not found") from None
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # PIL's check at open
        found = re.search(r"\((\d+) pixels\)", str(err))
        claims = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageTooLargeError(f"image {path} claims {claims}, more than the limit {max_image_pixels():,} "
                                 f"(a decompression bomb?); {REFUSED}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BadImageError(f"cannot read image {path}: {reason}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit ``RGB`` version of a PIL image of any mode (16-bit and float scaled, alpha over white).

    Args:
        im: A PIL image.

    Returns:
        ``im`` itself when it is already RGB without transparency, else a converted copy.
    """
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in SIXTEEN_BIT or mode == "I":
        a = np.asarray(im).astype(np.float64)  # I;16*: uint16 of either byte order; I: int32
        a = np.clip(a, 0, 65535) * (255.0 / 65535.0)
        return Image.fromarray(np.rint(a).astype(np.uint8)).convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.rint(np.clip(a, 0, 255)).astype(np.uint8)).convert("RGB")
    if mode in ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
