"""Many toy images with random attributes, written once to a folder (for training sparse autoencoders).

``write_toy_images(folder, n, seed)`` draws ``n`` objects uniformly over every attribute (held-out triples
included) and writes ``images/00000.png ...`` plus ``attributes.json`` (one attribute dict per image, in file
order), written last, so a folder with ``attributes.json`` is complete. Everything is a pure function of
``(n, seed)``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

from stori_pl.toy.world import ATTRIBUTES, render, sample_object
from stori_pl.utils import atomic_path, write_json

__all__ = ["ATTRIBUTE_FILE", "toy_images_folder", "write_toy_images", "load_toy_images", "attribute_vocabulary"]

ATTRIBUTE_FILE = "attributes.json"


def toy_images_folder(root: str | Path, n: int, seed: int) -> Path:
    """Where :func:`write_toy_images` puts ``n`` images of ``seed`` under ``root``."""
    return Path(root).expanduser() / f"toy_images_n{n}_seed{seed}"


def write_toy_images(folder: str | Path, n: int, seed: int = 0) -> tuple[list[Path], list[dict[str, str]]]:
    """Write ``n`` random toy images (unless ``folder`` already holds them); returns ``(paths, attributes)``."""
    folder = Path(folder).expanduser()
    if (folder / ATTRIBUTE_FILE).is_file():
        return load_toy_images(folder)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        obj = sample_object(rng, heldout=None)
        path = folder / "images" / f"{i:05d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(render(obj, rng)).save(tmp, format="PNG")
        rows.append({"image": path.relative_to(folder).as_posix(), **obj.as_dict()})
    write_json(folder / ATTRIBUTE_FILE, rows)
    return load_toy_images(folder)


def load_toy_images(folder: str | Path) -> tuple[list[Path], list[dict[str, str]]]:
    """``(paths, attributes)`` of a folder written by :func:`write_toy_images`.

    Raises:
        FileNotFoundError: no ``attributes.json`` in ``folder``.
    """
    folder = Path(folder).expanduser()
    file = folder / ATTRIBUTE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: write the images with stori_pl.toy.images.write_toy_images")
    rows = json.loads(file.read_text(encoding="utf-8"))
    return [folder / r["image"] for r in rows], [{k: r[k] for k in ATTRIBUTES} for r in rows]


def attribute_vocabulary() -> dict[str, tuple[str, str]]:
    """Toy label vocabulary: phrase -> (attribute, value). Values name themselves (``"red"``, ``"circle"``,
    ``"striped"``, ``"small"``), backgrounds are ``"<value> background"`` (a bare ``"white"`` would read as the
    object's color)."""
    vocab = {}
    for key, values in ATTRIBUTES.items():
        for v in values:
            vocab[f"{v} background" if key == "background" else v] = (key, v)
    return vocab
