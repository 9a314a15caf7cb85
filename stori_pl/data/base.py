"""Few-shot benchmark datamodules: the base class does the work, each dataset only declares facts.

How to add a dataset (``dtd.py`` is a complete example)::

    class MyData(FewShotDataModule):
        folder = "my_data"                 # sub-folder of `root` (`root` may also be that folder itself)
        image_dir = "images"               # images are <folder>/<image_dir>/<impath>
        split_file = "split_my_data.json"  # CoOp schema {"train"|"val"|"test": [[impath, label, classname]]}
        split_source = "https://..."       # where users get it (printed in errors)
        templates = ("a photo of a {}.",)  # base prompt(s); "{}" is the class name
        cupl_default = "https://.../my_prompts.json"  # CuPL file used when `cupl` is not given (or None)
        cupl_name_map = {"my class": "cupl key"}       # class index or name -> CuPL key, where they differ

Override ``load_split(dataset_dir) -> dict`` when the split is not one JSON file (ImageNet lists folders),
``download_images(dataset_dir)`` for ``download: true``, and ``cupl_key_rule`` to rewrite CuPL keys.
Everything else (few-shot sampling, missing-image checks, cached features, prompts, loaders) is shared.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader

from stori_pl.data import coop, cupl
from stori_pl.data.containers import FeatureDataset, PromptSet
from stori_pl.data.features import image_features
from stori_pl.data.attribute_labels import attribute_index, datamodule_labels
from stori_pl.data.images import images_loader

__all__ = ["FewShotDataModule"]


class FewShotDataModule(L.LightningDataModule):
    """Base datamodule of the few-shot benchmarks (CoOp splits, CuPL prompts, cached CLIP features).

    Args:
        root: Folder holding the dataset folder (e.g. ``data/`` with ``data/dtd/``), or the dataset folder.
        clip_model: open_clip model whose image encoder makes the features (linked from the model by the CLI).
        pretrained: Its weights (open_clip tag, checkpoint file, or None for random init).
        shots: Training images per class (CoOp: 1, 2, 4, 8, 16).
        seed: Few-shot sampling seed (CoOp: 1, 2, 3).
        fewshot_file: CoOp index file ``shot_<k>-seed_<s>.json`` pinning the subset (overrides shots/seed).
        cupl: CuPL prompt file, path or URL (None: the dataset's default URL).
        prompts_per_class: Keep the N CuPL prompts most similar to the class's training images (None: all).
        classes: Restrict to these class names (in this order), e.g. two classes for a contrast view.
        cache_dir: Cache folder for features and downloads (None: ``$STORI_CACHE`` or ``~/.cache/stori_pl``).
        batch_size: Batch size of the feature dataloaders.
        num_workers: DataLoader workers decoding images while encoding features.
        download: Fetch missing images (torchvision) and the split file.
        skip_bad_images: Skip unreadable or missing images with a warning instead of failing.
        augment_views: Extra augmented views per training image, cached once (seeded random-resized-crop + flip;
            one random view per image and epoch, reproducible on resume); 0 = off. Costs ``augment_views``
            encodes of the training split, once.
        augment_scale: Crop scale range of the views (Dassl, CoOp / TaskRes: [0.08, 1]; Tip-Adapter: [0.5, 1]).
        templates: Override the dataset's base templates.
        drop_blank_prompts: Drop blank CuPL sentences with a warning (default: they are an error).
        subsample_classes: CoCoOp's base-to-novel split (``base``: the first half of the classes, ``new``: the
            rest, ``all``), applied after the few-shot sampling and ``classes`` (see
            :func:`stori_pl.data.coop.subsample_classes`); labels and class names follow the relabelling.
        attribute_labels: Per-image attribute words (IntCoOp): a labeller name (``toy``, ``clip``, ``file``,
            ``blip2``: this dataset's default label file, made on the fly for ``toy`` and ``clip``) or a label
            file; every batch then carries ``"attribute"`` (LongTensor [B], index into ``attribute_words``,
            -1 = no label). See :mod:`stori_pl.data.attribute_labels`.
        return_images: Batches also carry ``"image"`` (the CLIP's eval transform, decoded by ``num_workers``
            workers) for models that run the image tower (IntCoOp's ``visual_prompts``).
        drop_last: Drop the last incomplete training batch when the training set has at least ``batch_size``
            images: Dassl's rule (``dassl/data/data_manager.py`` ``build_data_loader``:
            ``drop_last=is_train and len(data_source) >= batch_size``), on in the CoOp and TaskRes configs.

    Parts: ``"train"``, ``"val"`` (the few-shot val set, at most 4 images per class as CoOp samples it),
    ``"test"``, and ``"full_val"`` (the split's whole val part, encoded only when asked for: Tip-Adapter's
    official search split).
    """

    folder: ClassVar[str] = ""
    image_dir: ClassVar[str] = "images"
    split_file: ClassVar[str | None] = None
    split_source: ClassVar[str | None] = None
    split_gdrive_id: ClassVar[str | None] = None
    extra_files: ClassVar[dict[str, str]] = {}  # other files fetched by download: true (name -> Drive id)
    templates: ClassVar[tuple[str, ...]] = ("a photo of a {}.",)
    cupl_default: ClassVar[str | None] = None
    cupl_name_map: ClassVar[dict[int | str, str]] = {}
    cupl_key_rule: ClassVar[Callable[[str], str] | None] = None

    def __init__(
        self,
        root: str,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        shots: int = 16,
        seed: int = 1,
        fewshot_file: str | None = None,
        cupl: str | None = None,
        prompts_per_class: int | None = None,
        classes: list[str] | None = None,
        cache_dir: str | None = None,
        batch_size: int = 256,
        num_workers: int = 2,
        download: bool = False,
        skip_bad_images: bool = False,
        augment_views: int = 0,
        templates: list[str] | None = None,
        augment_scale: tuple[float, float] = (0.08, 1.0),
        drop_blank_prompts: bool = False,
        subsample_classes: str = "all",
        attribute_labels: str | None = None,
        return_images: bool = False,
        drop_last: bool = False,
    ):
        super().__init__()
        coop.check_shots_seed(shots, seed)
        if subsample_classes not in coop.SUBSAMPLE_MODES:
            raise ValueError(f"subsample_classes must be one of {', '.join(coop.SUBSAMPLE_MODES)}, "
                             f"got {subsample_classes!r}")
        if prompts_per_class is not None and prompts_per_class < 1:
            raise ValueError(f"prompts_per_class must be >= 1 or None, got {prompts_per_class}")
        if augment_views < 0:
            raise ValueError(f"augment_views must be >= 0, got {augment_views}")
        if len(augment_scale) != 2 or not 0 < augment_scale[0] <= augment_scale[1] <= 1:
            raise ValueError(f"augment_scale must be [low, high] with 0 < low <= high <= 1, got {augment_scale}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.clip_model, self.pretrained = clip_model, pretrained
        self.shots, self.seed, self.fewshot_file = shots, seed, fewshot_file
        self.cupl, self.prompts_per_class, self.classes = cupl, prompts_per_class, classes
        self.cache_dir, self.batch_size, self.num_workers = cache_dir, batch_size, num_workers
        self.download, self.skip_bad_images, self.augment_views = download, skip_bad_images, augment_views
        self.augment_scale = tuple(augment_scale)
        if templates:
            self.templates = tuple(templates)
        self.drop_blank_prompts = drop_blank_prompts
        self.subsample_classes, self.attribute_labels = subsample_classes, attribute_labels
        self.return_images, self.drop_last = return_images, drop_last
        self._attributes = None  # AttributeLabels once loaded
        self._keys: dict[str, list[str]] = {}
        self.classnames: list[str] = []
        self._subsets: dict[str, list[coop.Entry]] | None = None
        self._data: dict[str, FeatureDataset] = {}
        self._prompts: PromptSet | None = None

    # ----------------------------------------------------------------- layout (subclasses may override)
    def dataset_dir(self) -> Path:
        """``root/<folder>`` (or ``root`` itself when it already is the dataset folder)."""
        if not self.root.is_dir() and not self.download:
            raise FileNotFoundError(f"data root not found: {self.root}. Set `root` to the folder holding "
                                    f"{self.folder or 'the dataset'}/ (layout: docs/datasets.md), or download: true.")
        inner = self.root / self.folder
        if not inner.is_dir() and self._looks_like_dataset(self.root):
            return self.root
        return inner

    def _looks_like_dataset(self, d: Path) -> bool:
        return (d / self.image_dir).is_dir() or bool(self.split_file and (d / self.split_file).is_file())

    def split_location(self) -> str:
        return self.split_source or (coop.GDRIVE.format(self.split_gdrive_id) if self.split_gdrive_id else "?")

    def load_split(self, dataset_dir: Path) -> dict[str, list[coop.Entry]]:
        """The CoOp split ``{"train"|"val"|"test": [[impath, label, classname]]}``."""
        return coop.read_split(dataset_dir / self.split_file, self.split_location())

    @staticmethod
    def coop_classname(folder: str) -> str | None:
        """CoOp's class name of an image folder (default: the folder name; None = ignored by CoOp)."""
        return folder

    def download_images(self, dataset_dir: Path) -> None:
        """Fetch the raw images into ``dataset_dir/<image_dir>`` (subclasses with a downloader override)."""
        raise coop.DownloadError(f"{type(self).__name__} cannot download its images automatically; put them in "
                                 f"{dataset_dir / self.image_dir} (see docs/datasets.md).")

    def _tv_download(self, dataset_dir: Path, tv_class: str, inner: str, **kwargs) -> None:
        """Run a torchvision downloader into ``dataset_dir/_download`` and move ``inner`` into place."""
        import torchvision.datasets as tvd

        tmp = dataset_dir / "_download"
        getattr(tvd, tv_class)(root=str(tmp), download=True, **kwargs)
        if not (tmp / inner).is_dir():
            raise RuntimeError(f"torchvision's {tv_class} download did not create {tmp / inner}; move the image "
                               f"folder from {tmp} to {dataset_dir / self.image_dir} by hand.")
        (tmp / inner).rename(dataset_dir / self.image_dir)

    # ----------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Download (when asked) and encode every split once into the feature cache (rank 0 only)."""
        if self.download:
            self.download_dataset()
        self._features_for(("train", "val", "test"))

    def download_dataset(self) -> None:
        """Fetch what is missing of the dataset: the split file (and ``extra_files``), then the images.

        Called by :meth:`prepare_data` when ``download`` is true (and by ``stori cache``). Files already
        present are kept; a failed download removes what it created and raises an error saying what to get
        and where to save it.
        """
        d = self.dataset_dir()
        with coop.undo_on_failure([self.root, d]):  # a failed download leaves nothing behind
            d.mkdir(parents=True, exist_ok=True)
            files = dict(self.extra_files)
            if self.split_file:
                files[self.split_file] = self.split_gdrive_id
            for name, file_id in files.items():
                if not (d / name).is_file():
                    if not file_id:
                        raise coop.DownloadError(f"cannot download {name}; get it from {self.split_location()} "
                                                f"and save it as {d / name}")
                    coop.download_split(file_id, d / name)
            if not (d / self.image_dir).is_dir():
                self.download_images(d)

    def setup(self, stage: str | None = None) -> None:
        parts = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        self._features_for(parts.get(stage, ("train", "val", "test")))

    def subsets(self) -> dict[str, list[coop.Entry]]:
        """The few-shot train/val and the test entries (labels remapped when ``classes`` is set)."""
        if self._subsets is None:
            split = self.load_split(self.dataset_dir())
            names = coop.classnames_from_split(split, f"{type(self).__name__} split")
            fs = (coop.load_fewshot_file(self.fewshot_file, split) if self.fewshot_file
                  else coop.few_shot_split(split, self.shots, self.seed))
            subsets = {"train": fs["train"], "val": fs["val"], "test": split["test"], "full_val": split["val"]}
            self._raw_names = list(names)  # as the split file (and Dassl) has them
            self.classnames = [n.replace("_", " ") for n in names]
            self._all_names = list(self.classnames)
            self._label_ids = list(range(len(names)))
            if self.classes:
                subsets = self._restrict(subsets, names)
            if self.subsample_classes != "all":
                subsets, selected = coop.subsample_classes(subsets, self.subsample_classes)
                self.classnames = [self.classnames[i] for i in selected]
                self._label_ids = [self._label_ids[i] for i in selected]
            self._subsets = subsets
        return self._subsets

    def _restrict(self, subsets: dict, names: list[str]) -> dict:
        lookup = {n.replace("_", " ").lower(): i for i, n in enumerate(names)}
        unknown = [c for c in self.classes if c.replace("_", " ").lower() not in lookup]
        if unknown:
            raise ValueError(f"classes {unknown} are not in {type(self).__name__} (e.g. {self.classnames[:5]})")
        ids = [lookup[c.replace("_", " ").lower()] for c in self.classes]
        new = {old: new for new, old in enumerate(ids)}
        self.classnames = [self.classnames[i] for i in ids]
        self._label_ids = ids
        return {k: [[e[0], new[e[1]], e[2]] for e in v if e[1] in new] for k, v in subsets.items()}

    def with_subsample(self, subsample_classes: str) -> FewShotDataModule:
        """A fresh copy of this datamodule (same data, shots, seed, cache, labels) on another class subset
        (``base`` | ``new`` | ``all``): the base-to-novel test after training on the base classes."""
        if subsample_classes not in coop.SUBSAMPLE_MODES:
            raise ValueError(f"subsample_classes must be one of {', '.join(coop.SUBSAMPLE_MODES)}, "
                             f"got {subsample_classes!r}")
        other = copy.copy(self)
        other.subsample_classes, other.classnames, other.trainer = subsample_classes, [], None
        other._subsets, other._data, other._prompts, other._attributes, other._keys = None, {}, None, None, {}
        for name in ("_hparams", "_hparams_initial"):  # the copy's own hyperparameters, as logged for its runs
            if "subsample_classes" in getattr(self, name, {}):
                setattr(other, name, copy.copy(getattr(self, name)))
                getattr(other, name)["subsample_classes"] = subsample_classes
        return other

    def image_root(self) -> Path:
        return self.dataset_dir() / self.image_dir

    def image_lists(self, parts=("train", "val", "test")) -> dict[str, tuple[list[Path], int]]:
        """Per part: the image paths and the number of augmented views to encode.

        Missing images raise one error naming them; with ``skip_bad_images`` they are passed on and skipped
        with a warning like unreadable ones (unless all of a part's images are missing: then ``root`` is wrong).
        """
        subsets, out = self.subsets(), {}
        for part in parts:
            entries = subsets[part]
            if not self.skip_bad_images or len(coop.missing_images(self.image_root(), entries)) == len(entries):
                coop.check_images(self.image_root(), entries, part, suggest_skip=not self.skip_bad_images)
            views = self.augment_views if part == "train" else 0
            out[part] = ([self.image_root() / e[0] for e in subsets[part]], views)
        return out

    def _features_for(self, parts) -> None:
        todo = [p for p in parts if p not in self._data]
        for part, (paths, views) in self.image_lists(todo).items():
            feats, kept = image_features(
                paths, self.clip_model, self.pretrained, cache_dir=self.cache_dir, batch_size=64,
                num_workers=self.num_workers, skip_bad_images=self.skip_bad_images, views=views,
                augment_scale=self.augment_scale)
            entries = self.subsets()[part]
            labels = torch.tensor([entries[k][1] for k in kept], dtype=torch.long)  # [N]
            self._data[part] = FeatureDataset(feats, labels, random_view=part == "train")
            self._keys[part] = [entries[k][0] for k in kept]
        if self.attribute_labels and todo:
            self._attach_attributes(todo)

    def _attach_attributes(self, parts) -> None:
        """Each part's attribute indices (labels made first for the offline labellers, see ``attribute_labels``)."""
        self._attributes = datamodule_labels(self, parts)
        for part in parts:
            self._data[part].attributes = attribute_index(self._attributes, self._keys[part], part, self.image_root())

    def image_keys(self, part: str) -> list[str]:
        """The images of one part's cached features, in order, as paths relative to :meth:`image_root`
        (the keys of attribute label files): ``image_keys(part)[i]`` is the image of ``split_features(part)[0][i]``."""
        if part not in self._keys:
            self._features_for((part,))
        return list(self._keys[part])

    @property
    def attribute_words(self) -> list[str]:
        """The attribute vocabulary of ``attribute_labels`` (sorted unique words); batches' ``"attribute"``
        index into it. Empty without ``attribute_labels``."""
        if not self.attribute_labels:
            return []
        if self._attributes is None:
            self._features_for(("train",))  # loads (or makes) the labels
        if self._attributes is None:  # train was loaded before attribute_labels was set
            self._attach_attributes(("train",))
        return list(self._attributes.words)

    def split_features(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All cached features and labels of one part (``"train"``, ``"val"``, ``"test"``).

        Returns:
            ``(features, labels)``: features ``[N, D]`` L2-normalized, or ``[N, 1 + V, D]`` for the train part
            with ``augment_views = V`` (view 0 is the plain eval transform); labels ``[N]`` long.
        """
        if part not in self._data:
            self._features_for((part,))
        return self._data[part].features, self._data[part].labels

    @property
    def feature_dim(self) -> int:
        if not self._data:
            self._features_for(("train",))
        return next(iter(self._data.values())).features.shape[-1]

    # ----------------------------------------------------------------- prompts
    def prompt_set(self) -> PromptSet:
        """Base template prompts and CuPL sentences per class (top-N selected when prompts_per_class)."""
        if self._prompts is None:
            self.subsets()
            base = [[t.format(n) for t in self.templates] for n in self.classnames]
            raw = [self._raw_names[i] for i in self._label_ids]
            self._prompts = PromptSet(list(self.classnames), base, self._cupl_prompts(), raw, list(self.templates))
        return self._prompts

    def cupl_source(self) -> str | None:
        """The CuPL file to use: ``cupl`` or the dataset's default (subclasses may compute one)."""
        return self.cupl or self.cupl_default

    def _cupl_prompts(self) -> list[list[str]]:
        source = self.cupl_source()
        if source is None:
            warnings.warn(f"{type(self).__name__}: no CuPL prompts (set `cupl`); base prompts only", stacklevel=3)
            return [[] for _ in self.classnames]
        raw = cupl.load_cupl(source, self.cache_dir)
        rule = type(self).cupl_key_rule
        matched = cupl.match_cupl(raw, self._all_names, self.cupl_name_map, rule, source=str(source),
                                  drop_blank=self.drop_blank_prompts)
        prompts = [matched[i] for i in self._label_ids]
        if self.prompts_per_class:
            prompts = self._select(prompts)
        return prompts

    def _select(self, prompts: list[list[str]]) -> list[list[str]]:
        """Top-N prompts per class by similarity to the class's training images (cached, see cupl.py)."""
        self._features_for(("train",))
        data = self._data["train"]
        feats = data.features if data.features.ndim == 2 else data.features[:, 0]  # [N, D]
        return cupl.cached_top_prompts(prompts, feats, data.labels, self.prompts_per_class, self.clip_model,
                                       self.pretrained, self.cache_dir)

    # ----------------------------------------------------------------- loaders
    def _loader(self, part: str, shuffle: bool = False) -> DataLoader:
        if part not in self._data:
            self._features_for((part,))
        if self.return_images:  # IntCoOp's visual prompts run the image tower on every step

            return images_loader(self, self._data[part], part, shuffle)
        drop_last = part == "train" and self.drop_last and len(self._data[part]) >= self.batch_size  # Dassl's rule
        return DataLoader(self._data[part], batch_size=self.batch_size, shuffle=shuffle, num_workers=0,
                          drop_last=drop_last)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
