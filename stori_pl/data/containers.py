"""The plain containers a datamodule hands out: :class:`PromptSet` (the prompts per class, what a classifier is
built from and its checkpoint stores) and :class:`FeatureDataset` (cached image features with labels).

Both are re-exported by :mod:`stori_pl.data.base` and :mod:`stori_pl.data`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import Dataset


@dataclasses.dataclass
class PromptSet:
    """Prompts per class: ``base[c]`` (template prompts, fixed) and ``cupl[c]`` (sentences to reweight).

    ``raw_classnames`` (the class names exactly as the split file / Dassl has them, underscores kept) and
    ``templates`` (the base templates, ``"{}"`` = the class name) are optional: a datamodule fills them so that a
    baseline can format its prompts as its official code does (TaskRes formats the raw Dassl name).
    """

    classnames: list[str]
    base: list[list[str]]
    cupl: list[list[str]]
    raw_classnames: list[str] | None = None
    templates: list[str] | None = None

    def __post_init__(self):
        if not len(self.classnames) == len(self.base) == len(self.cupl):
            raise ValueError(f"PromptSet: {len(self.classnames)} classes but {len(self.base)} base and "
                             f"{len(self.cupl)} CuPL prompt lists")
        if self.raw_classnames is not None and len(self.raw_classnames) != len(self.classnames):
            raise ValueError(f"PromptSet: {len(self.classnames)} classes but {len(self.raw_classnames)} raw names")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptSet:
        raw, templates = d.get("raw_classnames"), d.get("templates")  # absent in checkpoints before 0.2
        return cls(list(d["classnames"]), [list(p) for p in d["base"]], [list(p) for p in d["cupl"]],
                   list(raw) if raw is not None else None, list(templates) if templates is not None else None)


class FeatureDataset(Dataset):
    """Cached features with labels; with augmented views ([N, V, D]) a random view is drawn per access.

    ``attributes`` (LongTensor ``[N]``, set by ``FewShotDataModule(attribute_labels=...)``): each image's index
    into the datamodule's ``attribute_words`` (-1: no label); items then carry ``"attribute"`` too.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, random_view: bool = False,
                 attributes: torch.Tensor | None = None):
        self.features, self.labels, self.random_view = features, labels, random_view
        self.attributes = attributes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f = self.features[i]
        if f.ndim == 2:  # [V, D]
            f = f[torch.randint(len(f), ()).item()] if self.random_view else f[0]
        item = {"features": f, "label": self.labels[i]}
        if self.attributes is not None:
            item["attribute"] = self.attributes[i]
        return item
