"""Image datasets with binary attributes for preference retrieval: CelebA, CUB-200-2011, and a simple CSV format.

Layouts read (nothing is downloaded):

- **CelebA** (torchvision's layout): ``<root>/celeba/list_attr_celeba.txt`` and ``<root>/celeba/img_align_celeba/``
  (``root`` may also be the ``celeba`` folder itself). Labels ``1`` / ``-1``; 40 attribute names.
- **CUB-200-2011**: ``<root>/images.txt`` (``id relative/path.jpg``), ``<root>/images/``,
  ``<root>/attributes/image_attribute_labels.txt`` (``image_id attribute_id is_present certainty time``) and
  ``attributes.txt`` (``id has_wing_color::blue``) in ``<root>/attributes/``, ``<root>`` or its parent (the
  official archive puts it next to ``CUB_200_2011/``). ``root`` may be the parent of ``CUB_200_2011/``.
- **CSV** (any image folder, e.g. the toy world): ``<root>/attributes.csv`` with a column ``image`` (path
  relative to ``root``) and one column per attribute holding ``0``/``1`` (also ``-1``/``1``, ``true``/``false``).
"""

from __future__ import annotations

import csv
import difflib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from stori_pl.retrieval.metrics import category_names

__all__ = [
    "AttributeDataset", "AttributeTask", "ATTRIBUTE_LOADERS", "load_celeba", "load_cub", "load_attribute_csv",
    "load_attributes", "build_pool",
]

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "-1", "false", "no", "n", "f"}


@dataclass
class AttributeDataset:
    """Images with binary attributes.

    Attributes:
        name: ``"celeba"``, ``"cub"`` or ``"csv"``.
        paths: ``N`` image paths.
        attributes: ``A`` attribute names.
        labels: ``[N, A]`` bool.
    """

    name: str
    paths: list[Path]
    attributes: list[str]
    labels: torch.Tensor

    def index(self, attribute: str) -> int:
        """Column of ``attribute``; KeyError listing the valid names (closest first) if unknown."""
        if attribute in self.attributes:
            return self.attributes.index(attribute)
        close = difflib.get_close_matches(attribute, self.attributes, n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(f"attribute {attribute!r} is not in the {self.name} dataset.{hint} "
                       f"Valid names: {', '.join(self.attributes)}")

    def column(self, attribute: str) -> torch.Tensor:
        """``[N]`` bool labels of one attribute."""
        return self.labels[:, self.index(attribute)]


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


@dataclass
class AttributeTask:
    """Three attributes and a prompt template.

    Args:
        attributes: Attribute names as in the dataset (e.g. ``["Blond_Hair", "Eyeglasses", "Smiling"]``).
        prompt: Template with ``{0}``, ``{1}``, ``{2}`` where the attributes' phrases go.
        phrases: Words for each attribute; default: the name with ``_`` → space, lower case.
    """

    attributes: list[str]
    prompt: str
    phrases: list[str] | None = None

    def words(self) -> list[str]:
        """The phrase of each attribute."""
        if self.phrases is not None:
            if len(self.phrases) != len(self.attributes):
                raise ValueError(f"task {self.attributes}: {len(self.phrases)} phrases for {len(self.attributes)} attributes")
            return list(self.phrases)
        return [a.split("::")[-1].replace("_", " ").lower() for a in self.attributes]


def load_celeba(root: str | Path) -> AttributeDataset:
    """Read CelebA's ``list_attr_celeba.txt`` (torchvision layout)."""
    root = Path(root).expanduser()
    base = root / "celeba" if (root / "celeba").is_dir() else root
    lines = _need(base / "list_attr_celeba.txt", "CelebA attribute file").read_text().splitlines()
    images = _need(base / "img_align_celeba", "CelebA image folder")
    names = lines[1].split()
    paths, rows = [], []
    for n, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise ValueError(f"{base / 'list_attr_celeba.txt'} line {n}: expected {len(names) + 1} fields, got {len(parts)}")
        paths.append(images / parts[0])
        rows.append([v == "1" for v in parts[1:]])
    return AttributeDataset("celeba", paths, names, torch.tensor(rows, dtype=torch.bool).reshape(len(rows), len(names)))


def load_cub(root: str | Path) -> AttributeDataset:
    """Read CUB-200-2011's per-image attribute labels (``is_present``)."""
    root = Path(root).expanduser()
    if (root / "CUB_200_2011").is_dir():
        root = root / "CUB_200_2011"
    candidates = [root / "attributes" / "attributes.txt", root / "attributes.txt", root.parent / "attributes.txt"]
    attr_file = next((p for p in candidates if p.is_file()), None)
    if attr_file is None:
        raise FileNotFoundError(f"CUB attributes.txt not found (looked in {', '.join(map(str, candidates))})")
    names = [line.split(maxsplit=1)[1].strip() for line in attr_file.read_text().splitlines() if line.strip()]
    ids, paths = {}, []
    for line in _need(root / "images.txt", "CUB images.txt").read_text().splitlines():
        if line.strip():
            image_id, rel = line.split(maxsplit=1)
            ids[int(image_id)] = len(paths)
            paths.append(root / "images" / rel.strip())
    label_file = _need(root / "attributes" / "image_attribute_labels.txt", "CUB image_attribute_labels.txt")
    rows, cols = [], []
    for n, line in enumerate(label_file.read_text().splitlines(), start=1):
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "1":  # a few official lines carry an extra field: use the first 3
            try:
                rows.append(ids[int(parts[0])])
                cols.append(int(parts[1]) - 1)
            except (ValueError, KeyError) as e:
                raise ValueError(f"{label_file} line {n}: cannot read {line!r} ({e!r})") from None
        elif parts and (len(parts) < 3 or parts[2] != "0"):
            raise ValueError(f"{label_file} line {n}: expected 'image_id attribute_id is_present ...', got {line!r}")
    labels = torch.zeros(len(paths), len(names), dtype=torch.bool)
    if cols and (max(cols) >= len(names) or min(cols) < 0):
        raise ValueError(f"{label_file}: attribute ids outside 1..{len(names)} of {attr_file}")
    labels[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = True
    return AttributeDataset("cub", paths, names, labels)


def load_attribute_csv(root: str | Path, csv_file: str | Path | None = None) -> AttributeDataset:
    """Read ``<root>/attributes.csv``: column ``image`` (path relative to ``root``) + binary attribute columns."""
    root = Path(root).expanduser()
    csv_path = Path(csv_file) if csv_file else root / "attributes.csv"
    with open(_need(csv_path, "attribute CSV"), newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        if "image" not in fields:
            raise ValueError(f"{csv_path}: needs a column 'image' (found {fields})")
        names = [c for c in fields if c != "image"]
        paths, rows = [], []
        for n, row in enumerate(reader, start=2):
            values = []
            for name in names:
                v = (row[name] or "").strip().lower()
                if v not in _TRUE | _FALSE:
                    raise ValueError(f"{csv_path} line {n}, column {name!r}: {row[name]!r} is not binary (0/1)")
                values.append(v in _TRUE)
            paths.append(root / row["image"])
            rows.append(values)
    return AttributeDataset("csv", paths, names, torch.tensor(rows, dtype=torch.bool).reshape(len(rows), len(names)))


ATTRIBUTE_LOADERS: dict[str, Callable] = {"celeba": load_celeba, "cub": load_cub, "csv": load_attribute_csv}


def load_attributes(dataset: str, root: str | Path, loaders: Mapping[str, Callable] | None = None) -> AttributeDataset:
    """Read an attribute dataset by name: ``celeba``, ``cub``, ``csv``, or one of ``loaders`` (name → ``loader(root)``;
    the ``stori retrieval-eval`` command adds the toy world's ``toy``)."""
    loaders = {**ATTRIBUTE_LOADERS, **(loaders or {})}
    if dataset not in loaders:
        raise ValueError(f"unknown attribute dataset {dataset!r}; choose one of {list(loaders)}")
    return loaders[dataset](root)


def build_pool(
    ds: AttributeDataset, attributes: Sequence[str], per_category: int | None = 100, seed: int = 0
) -> tuple[list[int], torch.Tensor]:
    """Sample the category pool: up to ``per_category`` images of each combination of the binary attributes.

    Category id bit ``a`` is attribute ``a`` (see :func:`stori_pl.retrieval.metrics.category_names`); with 3
    attributes there are 8 categories. Sampling uses ``random.Random(seed)``; ``None`` keeps all images.

    Returns:
        ``(indices into ds.paths, categories [M] long)``, grouped by category.

    Raises:
        KeyError: unknown attribute (lists the valid ones). ValueError: a category has no image.
    """
    cols = torch.stack([ds.column(a) for a in attributes], dim=1)  # [N, A]
    codes = (cols.long() << torch.arange(len(attributes))).sum(dim=1)  # [N]
    rng = random.Random(seed)
    indices, cats, short = [], [], []
    for c in range(2 ** len(attributes)):
        members = torch.nonzero(codes == c).flatten().tolist()
        if not members:
            raise ValueError(f"no image of category {category_names(attributes)[c]!r} in {ds.name}; "
                             "choose attributes whose combinations all occur")
        if per_category is not None and len(members) > per_category:
            members = sorted(rng.sample(members, per_category))
        elif per_category is not None and len(members) < per_category:
            short.append((c, len(members)))
        indices += members
        cats += [c] * len(members)
    if short:
        import warnings

        warnings.warn(f"{ds.name}: categories {short} (id, count) have fewer than {per_category} images; "
                      "using all of them", stacklevel=2)
    return indices, torch.tensor(cats, dtype=torch.long)
