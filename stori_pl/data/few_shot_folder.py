"""``FewShotImageFolder``: few-shot training on your own images (one folder per class), like the benchmarks.

Layouts (class folders hold images, any of :data:`stori_pl.data.features.IMAGE_EXTENSIONS`, searched recursively)::

    DIR/<class>/*                      # one pool: a stratified train/val/test split is drawn with the seed
    DIR/{train,val,test}/<class>/*     # your own split (val may be missing: drawn from train, as for ImageNet)

The few-shot subset is then sampled exactly like the benchmarks' (:func:`stori_pl.data.coop.few_shot_split`):
``shots`` train and ``min(shots, 4)`` val images per class with ``random.Random(seed)``. Class names are the folder
names with ``_`` -> space, or ``classnames`` maps folder names to names. Descriptions come from ``prompts``, a file
in CuPL's format ``{class name: [sentence, ...]}`` (write one with ``stori describe``); without it the templates
stand in as each class's descriptions.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

from stori_pl.data import coop
from stori_pl.data.base import FewShotDataModule
from stori_pl.data.features import IMAGE_EXTENSIONS, list_images

SPLITS = ("train", "val", "test")


def class_folders(folder: Path) -> list[Path]:
    """The class sub-folders of ``folder`` (not hidden), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def stratified_split(images: dict[str, list[str]], seed: int, p_train: float = 0.5, p_val: float = 0.2,
                     ) -> dict[str, list[coop.Entry]]:
    """CoOp's ``read_and_split_data`` (KaiyangZhou/CoOp ``datasets/dtd.py``, lines 54-95) with a seeded generator.

    Classes in sorted order; per class the images (sorted) are shuffled, ``round(n * p_train)`` go to train,
    ``round(n * p_val)`` to val and the rest to test; each part gets at least one image.

    Args:
        images: Class name -> image paths (relative to the data root), in the order labels are given.
        seed: Seed of ``random.Random`` (CoOp shuffles with the global ``random`` after seeding it).
        p_train, p_val: Fractions of each class for train and val (CoOp: 0.5, 0.2).

    Returns:
        ``{"train"|"val"|"test": [[impath, label, classname], ...]}``.

    Raises:
        ValueError: a class with fewer than 3 images (one per part).
    """
    rng = random.Random(seed)
    out: dict[str, list[coop.Entry]] = {part: [] for part in SPLITS}
    for label, (name, paths) in enumerate(images.items()):
        paths = sorted(paths)
        rng.shuffle(paths)
        n = len(paths)
        n_train, n_val = round(n * p_train), round(n * p_val)
        if n < 3 or n_train < 1 or n_val < 1 or n - n_train - n_val < 1:
            raise ValueError(f"class {name!r} has {n} image(s): a train/val/test split needs at least 3 "
                             f"(or give your own split as DIR/train, DIR/val, DIR/test)")
        cut = {"train": paths[:n_train], "val": paths[n_train:n_train + n_val], "test": paths[n_train + n_val:]}
        for part in SPLITS:
            out[part] += [[p, label, name] for p in cut[part]]
    return out


class FewShotImageFolder(FewShotDataModule):
    """Few-shot data from a folder of class folders (your own dataset), with cached CLIP features.

    Args:
        root: ``DIR`` holding ``<class>/`` folders, or ``train/``, ``test/`` (and ``val/``) with class folders.
        prompts: CuPL-format JSON file ``{class name: [sentence, ...]}`` (keys: the class names, or the folder
            names); None: the templates are the descriptions.
        classnames: Folder name -> class name (a dict, or a JSON file of one); folders not in it keep their name
            with ``_`` -> space.
        split_seed: Seed of the stratified split of a one-pool layout (None: ``seed``, so each seed also draws
            its own test set, like CoOp's few-shot sampling; fix it to keep one test set across seeds).
        p_train, p_val: Fractions of each class for train and val in a one-pool layout (CoOp: 0.5, 0.2).
        templates: Base templates, ``"{}"`` the class name (default ``a photo of a {}.``).
        **kwargs: As :class:`~stori_pl.data.base.FewShotDataModule` (``clip_model``, ``shots``, ``seed``,
            ``cache_dir``, ``batch_size``, ``num_workers``, ``augment_views``, ...).

    Raises:
        ValueError: (one line, at the first use) a class folder without images, a folder without class
            folders or images, a class missing from the prompts file.
    """

    folder = ""
    image_dir = ""

    def __init__(
        self,
        root: str,
        prompts: str | None = None,
        classnames: dict[str, str] | str | None = None,
        split_seed: int | None = None,
        p_train: float = 0.5,
        p_val: float = 0.2,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        shots: int = 16,
        seed: int = 1,
        templates: list[str] | None = None,
        **kwargs,
    ):
        if not (0 < p_train < 1 and 0 < p_val < 1 and p_train + p_val < 1):
            raise ValueError(f"p_train and p_val must be in (0, 1) with p_train + p_val < 1, got {p_train}, {p_val}")
        if kwargs.get("cupl") is not None:
            raise ValueError("FewShotImageFolder takes its descriptions from `prompts` (a CuPL-format file), "
                             "not `cupl`")
        super().__init__(root, clip_model=clip_model, pretrained=pretrained, shots=shots, seed=seed,
                         cupl=prompts, templates=templates, **kwargs)
        self.prompts_file, self.split_seed, self.p_train, self.p_val = prompts, split_seed, p_train, p_val
        self._classname_map = classnames

    # ----------------------------------------------------------------- layout
    def dataset_dir(self) -> Path:
        if not self.root.is_dir():
            raise FileNotFoundError(f"FewShotImageFolder: data root {self.root} is not a folder (expected "
                                    f"DIR/<class>/* or DIR/train/<class>/*, see docs/few_shot.md)")
        return self.root

    def has_split_folders(self) -> bool:
        """Whether ``root`` holds ``train/`` and ``test/`` folders (your own split) rather than class folders."""
        return (self.root / "train").is_dir() and (self.root / "test").is_dir()

    def _names(self) -> dict[str, str]:
        mapping = self._classname_map
        if isinstance(mapping, str):
            path = Path(mapping).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"classnames file not found: {path}")
            try:
                mapping = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"classnames file {path} is not valid JSON: {e}") from None
        if mapping is not None and not (isinstance(mapping, dict) and all(
                isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in mapping.items())):
            raise ValueError("classnames must map folder names to non-empty class names ({\"folder\": \"name\"})")
        return dict(mapping or {})

    def _images(self, folder: Path, where: str) -> dict[str, list[str]]:
        """Class folder name -> its image paths relative to ``root``; one-line errors for empty folders."""
        classes = class_folders(folder)
        if not classes:
            loose = list_images(folder, recursive=False)
            hint = (f" ({len(loose)} images lie directly in it: put each class's images in a folder of its own)"
                    if loose else "")
            raise ValueError(f"FewShotImageFolder: {where} {folder} has no class folders{hint}; expected "
                             f"{where}/<class>/<image> (docs/few_shot.md)")
        out = {}
        for c in classes:
            paths = list_images(c)
            if not paths:
                raise ValueError(f"FewShotImageFolder: class folder {c} has no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
            out[c.name] = [p.relative_to(self.root).as_posix() for p in paths]
        return out

    def load_split(self, dataset_dir: Path) -> dict[str, list[coop.Entry]]:
        """The split ``{"train"|"val"|"test": [[impath, label, classname]]}``: the split folders, or a stratified
        split of the class folders drawn with ``split_seed`` (default ``seed``)."""
        names = self._names()
        if self.has_split_folders():
            parts = {p: self._images(dataset_dir / p, p) for p in SPLITS if (dataset_dir / p).is_dir()}
            order = list(parts["train"])
            for part, images in parts.items():
                extra = sorted(set(images) - set(order))
                if extra:
                    raise ValueError(f"FewShotImageFolder: {part}/ has class folders that train/ lacks: {extra[:5]}")
            label = {c: i for i, c in enumerate(order)}
            split = {p: [[path, label[c], names.get(c, c)] for c, paths in images.items() for path in paths]
                     for p, images in parts.items()}
            split.setdefault("val", [])
        else:
            images = self._images(dataset_dir, "data root")
            seed = self.seed if self.split_seed is None else self.split_seed
            split = stratified_split(images, seed, self.p_train, self.p_val)
            for part in SPLITS:
                split[part] = [[e[0], e[1], names.get(e[2], e[2])] for e in split[part]]
        unknown = sorted(set(names) - set(self.classname_folders()))
        if unknown:
            warnings.warn(f"FewShotImageFolder: classnames names folders that do not exist: {unknown[:5]}",
                          stacklevel=2)
        return split

    def classname_folders(self) -> list[str]:
        """The class folder names, in label order."""
        folder = self.dataset_dir() / "train" if self.has_split_folders() else self.dataset_dir()
        return [c.name for c in class_folders(folder)]

    def folder_classnames(self) -> list[str]:
        """The class names, in label order, without reading any image (``classnames`` applied, ``_`` -> space):
        the names ``stori describe --root`` writes and the prompts file is matched against."""
        names = self._names()
        return [names.get(f, f).replace("_", " ") for f in self.classname_folders()]

    # ----------------------------------------------------------------- prompts
    def prepare_data(self) -> None:
        self.check_prompts()  # a class missing from the prompts file fails before any image is encoded
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.check_prompts()
        super().setup(stage)

    def check_prompts(self) -> None:
        """Raise one error naming every class the prompts file lacks (nothing to do without a file)."""
        if self.prompts_file is not None and not getattr(self, "_prompts_checked", False):
            self._matched_prompts()
            self._prompts_checked = True

    def _matched_prompts(self) -> list[list[str]]:
        """The prompts file's sentences per class (label order); keys are class names or folder names."""
        from stori_pl.data import cupl

        self.subsets()
        raw = cupl.load_cupl(self.prompts_file, self.cache_dir)
        by_folder = dict(enumerate(self.classname_folders()))
        try:
            matched = cupl.match_cupl(raw, self._all_names, by_folder, source=f"prompts file {self.prompts_file}",
                                      drop_blank=self.drop_blank_prompts)
        except ValueError as err:
            raise ValueError(str(err).replace("add the names to the dataset's cupl_name_map",
                                              "use the class names (or folder names) as its keys")) from None
        return [matched[i] for i in self._label_ids]

    def _cupl_prompts(self) -> list[list[str]]:
        if self.prompts_file is None:
            warnings.warn("FewShotImageFolder: no prompts file (--data.prompts); the templates stand in as the "
                          "class descriptions (write a file with `stori describe`)", stacklevel=3)
            return [[t.format(n) for t in self.templates] for n in self.classnames]
        prompts = self._matched_prompts()
        return self._select(prompts) if self.prompts_per_class else prompts
