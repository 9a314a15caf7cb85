"""CoOp protocol: split files, CoOp-identical few-shot sampling, few-shot index files, split downloads.

A split (``split_zhou_<Name>.json``) is ``{"train"|"val"|"test": [[impath, label, classname], ...]}`` with
``impath`` relative to the dataset's image folder. :func:`few_shot_split` reproduces CoOp's sampler
exactly (``Dassl``'s ``generate_fewshot_dataset`` after ``random.seed(seed)``), so the published few-shot
index files (``shot_<k>-seed_<s>.json``) come out item for item.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Entry = list  # [impath: str, label: int, classname: str]

GDRIVE = "https://drive.google.com/file/d/{}/view"
"""CoOp publishes its split files on Google Drive (links in CoOp's DATASETS.md)."""


class FewerImagesWarning(UserWarning):
    """A class has fewer training images than ``shots``: all of them are taken (CoOp / Dassl)."""


def check_shots_seed(shots: Any, seed: Any) -> None:
    """Raise a clear error unless ``shots`` is an int >= 1 and ``seed`` an int."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be an integer >= 1 (images per class), got {shots!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer (CoOp uses 1, 2, 3), got {seed!r} ({type(seed).__name__})")


def read_split(path: str | Path, source: str | None = None) -> dict[str, list[Entry]]:
    """Load and validate a CoOp split file.

    Args:
        path: ``split_zhou_*.json``.
        source: Where the file comes from (shown in the error when it is missing).
    """
    path = Path(path)
    if not path.is_file():
        hint = f" Download it from {source} and put it there" if source else ""
        raise FileNotFoundError(f"split file not found: {path}.{hint} (or set download: true).")
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"split file {path} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(split, dict) or "train" not in split or "test" not in split:
        raise ValueError(f"split file {path} must be a JSON object with 'train', 'val', 'test' lists")
    for name in ("train", "val", "test"):
        entries = split.setdefault(name, [])
        if entries is None:
            entries = split[name] = []
        if not isinstance(entries, list):
            raise ValueError(f"split file {path}: {name!r} must be a list of [impath, label, classname], "
                             f"not a JSON {type(entries).__name__}")
        for i, e in enumerate(entries):
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], int)
                    and not isinstance(e[1], bool) and isinstance(e[2], str)):
                raise ValueError(f"split file {path}: {name}[{i}] = {e!r} is not [impath, label, classname]")
    return split


def classnames_from_split(split: dict[str, list[Entry]], where: str = "split") -> list[str]:
    """Class names indexed by label (labels must be 0..C-1, one name per label)."""
    names: dict[int, str] = {}
    for part in ("train", "val", "test"):
        for impath, label, name in split.get(part, []):
            if names.setdefault(label, name) != name:
                raise ValueError(f"{where}: label {label} has two class names, {names[label]!r} and {name!r}")
    missing = sorted(set(range(len(names))) - set(names))
    if missing or not names:
        raise ValueError(f"{where}: labels must be 0..C-1; missing labels {missing[:10]}")
    return [names[i] for i in range(len(names))]


def _sample_per_label(entries: list[Entry], k: int, rng: random.Random, repeat: bool = False) -> list[Entry]:
    """Dassl's ``generate_fewshot_dataset`` (Dassl.pytorch ``dassl/data/datasets/base_dataset.py`` lines
    167-207): ``sample(items, k)`` per label; a label with fewer than ``k`` items gets ``choices(items, k=k)``
    (with replacement) when ``repeat``, else all its items."""
    by_label: dict[int, list[Entry]] = defaultdict(list)  # insertion order = first appearance
    for e in entries:
        by_label[e[1]].append(e)
    out: list[Entry] = []
    for items in by_label.values():
        if len(items) >= k:
            out.extend(rng.sample(items, k))
        else:
            out.extend(rng.choices(items, k=k) if repeat else items)
    return out


def few_shot_split(split: dict[str, list[Entry]], shots: int, seed: int) -> dict[str, list[Entry]]:
    """CoOp's few-shot subset: ``shots`` train and ``min(shots, 4)`` val images per class.

    ``random.Random(seed)``; labels in order of first appearance; ``sample(items, k)`` per label; a class with
    fewer training images than ``shots`` gives all of them, once (CoOp calls Dassl's
    ``generate_fewshot_dataset(train, num_shots=num_shots)`` with its default ``repeat=False``, CoOp
    ``datasets/dtd.py`` line 41; none of the six benchmarks has such a class at 16 shots), and a
    :class:`FewerImagesWarning` says so once, naming how many classes; ``--data.shots 100000`` thus takes every
    training image instead of building millions of repeats. Then the same over val. When the split has no val
    list (ImageNet), val is drawn the same way from the train images not picked for training (CoOp itself
    validates on test there).

    Args:
        split: Loaded split dict (:func:`read_split`).
        shots: Images per class (>= 1).
        seed: Random seed (CoOp: 1, 2, 3).

    Returns:
        ``{"train": [...], "val": [...]}``, entries as in the split file, in CoOp's order.
    """
    check_shots_seed(shots, seed)
    rng = random.Random(seed)
    train = _sample_per_label(split["train"], shots, rng)
    counts = Counter(e[1] for e in split["train"])
    short = sorted(label for label, n in counts.items() if n < shots)
    if short:
        warnings.warn(f"shots={shots}: {len(short)} of {len(counts)} classes have fewer training images "
                      f"(the smallest {min(counts.values())}); taking every image of those classes, as CoOp/Dassl "
                      f"do ({len(train)} training images in all)", FewerImagesWarning, stacklevel=2)
    val_pool = split.get("val") or _without(split["train"], train)
    val = _sample_per_label(val_pool, min(shots, 4), rng)
    return {"train": train, "val": val}


def _without(entries: list[Entry], taken: list[Entry]) -> list[Entry]:
    used = {e[0] for e in taken}
    return [e for e in entries if e[0] not in used]


def load_fewshot_file(path: str | Path, split: dict[str, list[Entry]]) -> dict[str, list[Entry]]:
    """Pin a few-shot subset from a CoOp index file (``shot_<k>-seed_<s>.json``).

    The file's ``indices`` point into the split's train/val lists; each ``data`` item's ``impath`` (which
    carries a ``./data/<ds>/images/`` style prefix) must end with the split entry's impath. Files without
    ``indices`` are matched by impath suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fewshot_file not found: {path}")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        out = {}
        for part in ("train", "val"):
            data, indices = index[part]["data"], index[part].get("indices")
            entries = split.get(part) or split["train"]
            out[part] = (_by_indices(entries, data, indices, f"{path}:{part}") if indices is not None
                         else _by_suffix(entries, data, f"{path}:{part}"))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"fewshot_file {path} is not a CoOp index file "
                         '({"train": {"data": [...], "indices": [...]}, "val": {...}}): ' f"{e!r}") from e
    return out


def _by_indices(entries: list[Entry], data: list[dict], indices: list[int], where: str) -> list[Entry]:
    if len(indices) != len(data):
        raise ValueError(f"{where}: {len(indices)} indices but {len(data)} data items")
    out = []
    for i, (j, item) in enumerate(zip(indices, data)):
        if not 0 <= j < len(entries):
            raise ValueError(f"{where}: index {j} out of range for a list of {len(entries)} (wrong split file?)")
        e = entries[j]
        if not _same(item["impath"], e[0]) or item["label"] != e[1]:
            raise ValueError(f"{where}[{i}]: {item['impath']} (label {item['label']}) does not match split "
                             f"entry {e} — the index file belongs to another split file")
        out.append(e)
    return out


def _by_suffix(entries: list[Entry], data: list[dict], where: str) -> list[Entry]:
    lookup = {e[0]: e for e in entries}
    out = []
    for item in data:
        parts = item["impath"].replace("\\", "/").split("/")
        match = next((lookup[k] for k in ("/".join(parts[n:]) for n in range(len(parts))) if k in lookup), None)
        if match is None:
            raise ValueError(f"{where}: {item['impath']} is not in the split file")
        out.append(match)
    return out


def _same(indexed: str, impath: str) -> bool:
    indexed = indexed.replace("\\", "/")
    return indexed == impath or indexed.endswith("/" + impath)


def missing_images(image_dir: Path, entries: list[Entry]) -> list[Path]:
    """Paths of split entries whose image file does not exist."""
    return [p for p in (image_dir / e[0] for e in entries) if not p.is_file()]


def check_images(image_dir: Path, entries: list[Entry], what: str, suggest_skip: bool = True) -> None:
    """One error naming the count and the first few missing images.

    Args:
        image_dir: Folder the split's image paths are relative to.
        entries: Split entries ``[impath, label, classname]``.
        what: The part, for the message (``"train"``, ...).
        suggest_skip: Mention ``skip_bad_images`` as a way out (not when it is already on).
    """
    missing = missing_images(image_dir, entries)
    if missing:
        first = "\n  ".join(str(p) for p in missing[:5])
        skip = ", or set skip_bad_images: true to skip missing images with a warning" if suggest_skip else ""
        raise FileNotFoundError(
            f"{len(missing)} of {len(entries)} {what} images listed in the split are missing under "
            f"{image_dir}, e.g.:\n  {first}\nCheck `root` and the dataset layout (docs/datasets.md), "
            f"or set download: true{skip}."
        )


class DownloadError(RuntimeError, ValueError):
    """A ``download: true`` step failed; the message says what to get by hand (or which extra to install)."""


GDOWN_HINT = 'pip install "stori-pl[download]"'


def require_gdown() -> None:
    """Raise :class:`DownloadError` naming the ``download`` extra when ``gdown`` is not installed."""
    import importlib.util

    if importlib.util.find_spec("gdown") is None:
        raise DownloadError(f"download: true fetches files from Google Drive with the package gdown, which is not "
                            f"installed: {GDOWN_HINT} (or download the files by hand: docs/datasets.md)")


def download_split(file_id: str, dest: Path) -> None:
    """Fetch a CoOp split (or class-name) file from Google Drive; on failure say what to get and where."""
    require_gdown()
    try:
        from torchvision.datasets.utils import download_file_from_google_drive

        download_file_from_google_drive(file_id, str(dest.parent), dest.name)
        if not dest.is_file():
            raise RuntimeError("no file written")
        if dest.suffix == ".json":
            json.loads(dest.read_text(encoding="utf-8"))  # Drive serves an HTML page when it refuses
    except Exception as e:  # noqa: BLE001 - any failure gets the same instructions
        if dest.is_file():
            dest.unlink()
        raise DownloadError(
            f"could not download {dest.name} ({e}). Download it by hand from {GDRIVE.format(file_id)} "
            f"and save it as {dest}."
        ) from e


def _first_missing(path: Path) -> Path | None:
    """The outermost not-yet-existing folder on the way to ``path`` (None when ``path`` exists)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


@contextlib.contextmanager
def undo_on_failure(folders: list[Path]) -> Iterator[None]:
    """Remove what a failed download created in ``folders`` and keep everything that was there before.

    Records which of ``folders`` (and their parents) exist and the entries directly inside each; on an
    exception, deletes the folders it created and the new entries of the others, then re-raises (as a
    :class:`DownloadError` naming the ``download`` extra when gdown was missing).
    """
    folders = [Path(f) for f in folders]
    created = [m for m in (_first_missing(f) for f in folders) if m is not None]
    before = {f: set(f.iterdir()) for f in folders if f.is_dir()}
    try:
        yield
    except BaseException as err:
        for folder, entries in before.items():
            for entry in set(folder.iterdir()) - entries if folder.is_dir() else ():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, RuntimeError) and not isinstance(err, DownloadError) and "gdown" in str(err):
            raise DownloadError(f"{err} — install it with {GDOWN_HINT}").with_traceback(None) from err
        if isinstance(err, Exception) and not isinstance(err, (ValueError, FileNotFoundError)):
            raise DownloadError(f"download failed ({type(err).__name__}: {err}); what it had created was removed"
                                ) from err
        raise


SUBSAMPLE_MODES = ("all", "base", "new")


def subsample_classes(subsets: dict[str, list[Entry]], subsample: str = "all",
                      ) -> tuple[dict[str, list[Entry]], list[int]]:
    """CoCoOp's base-to-novel split: the first half of the labels are *base*, the rest *new*.

    Follows ``KaiyangZhou/CoOp``, ``datasets/oxford_pets.py`` (``OxfordPets.subsample_classes``), which every
    dataset calls after its few-shot sampling (``datasets/dtd.py``): the labels of the first part (train) are
    sorted, the first ``ceil(n / 2)`` are base and the others new; the selected labels are relabelled
    ``0 .. m-1`` in that sorted order and every part keeps only their items.

    Args:
        subsets: ``{"train"|"val"|"test": [[impath, label, classname], ...]}``; ``"train"`` fixes the labels.
        subsample: ``"all"`` (unchanged), ``"base"`` or ``"new"``.

    Returns:
        ``(subsets, selected)``: the relabelled parts, and ``selected[new_label] = old_label``.
    """
    if subsample not in SUBSAMPLE_MODES:
        raise ValueError(f"subsample_classes must be one of {', '.join(SUBSAMPLE_MODES)}, got {subsample!r}")
    labels = sorted({e[1] for e in subsets["train"]})
    if subsample == "all":
        return subsets, labels
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    if not selected:
        raise ValueError(f"subsample_classes {subsample}: {len(labels)} class(es) leave no {subsample} classes")
    relabel = {old: new for new, old in enumerate(selected)}
    out = {part: [[e[0], relabel[e[1]], e[2]] for e in entries if e[1] in relabel]
           for part, entries in subsets.items()}
    return out, selected
