"""What the SAE-component commands (`stori components`, `stori components-eval`, `stori explain --sae`) read:
a classifier checkpoint, a matching SAE, images and the images of a split, each refused with one clear line.
Re-exported by :mod:`stori_pl.cli.components`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stori_pl.data.image_io import open_rgb


def load_matching_sae(path: str | None, classifier):
    """The SAE module of ``path``, refused (both names) unless trained on the classifier's CLIP."""
    from stori_pl.models import SparseAutoencoder, load_checkpoint

    if path is None:
        raise ValueError("--sae SAE.ckpt is required (a sparse autoencoder trained with stori fit --config sae/...)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"SAE checkpoint {path} not found (stori fit --config sae/... writes one)")
    module = load_checkpoint(path, expect=SparseAutoencoder)
    module.check_compatible(classifier.hparams.clip_model, module.block)
    return module.eval().requires_grad_(False)


def load_images(classifier, paths: list[Path]) -> torch.Tensor:
    """Preprocessed images ``[N, 3, H, W]``; an unreadable one raises ValueError naming its path."""
    # open_rgb: every PIL mode to RGB; "image PATH not found" / "cannot read image PATH: …" / too many pixels
    return torch.stack([classifier.preprocess(open_rgb(path)) for path in paths])


def check_class(classifier, name: str) -> str:
    """``name`` if it is one of the classifier's classes, else ValueError with close names."""
    import difflib

    if name not in classifier.classnames:
        close = difflib.get_close_matches(name, list(classifier.classnames), n=3)
        raise ValueError(f"unknown class {name!r}" + (f" (did you mean: {', '.join(close)})" if close else ""))
    return name


def split_images(data: str, root: Path, split: str, classifier, max_images: int) -> dict[str, list[Path]]:
    """Image paths of ``split`` per class of the classifier (at most ``max_images`` each, in split order)."""
    import importlib

    cls = None
    for module in ("stori_pl.data", "stori_pl.toy.data"):
        cls = cls or getattr(importlib.import_module(module), data, None)
    if cls is None:
        raise ValueError(f"unknown datamodule {data!r}: name a class of stori_pl.data (DTD, ...) or of stori_pl.toy.data (ToyShapes, ToyShapesSpurious, ToyKinds)")
    dm = cls(root=str(root), clip_model=classifier.hparams.clip_model, pretrained=classifier.hparams.pretrained)
    out: dict[str, list[Path]] = {}
    for impath, _, name in dm.subsets()[split]:
        name = name.replace("_", " ")
        if name in classifier.classnames and len(out.setdefault(name, [])) < max_images:
            out[name].append(dm.image_root() / impath)
    if not out:
        raise ValueError(f"{data} {split} split under {root} has none of the classifier's classes")
    return out


def label_check(table, module, paths: list[Path], attributes: list[dict[str, str]]):
    """:func:`~stori_pl.interpret.concepts.label_correctness` of the component table's labels over ``paths`` (whose
    ``attributes`` are known), toy labels mapped to their attribute values; prints one line and returns it."""
    from stori_pl.data.features import cls_activations
    from stori_pl.interpret.concepts import firing_sets, label_correctness
    from stori_pl.toy.images import attribute_vocabulary

    h = module.hparams
    fires = firing_sets(module.sae, cls_activations([str(p) for p in paths], h.clip_model, h.pretrained, h.block,
                                                    progress=False))
    result = label_correctness(fires, attributes, table.labels, attribute_vocabulary())
    print(f"label correctness: {result.right} of {result.labelled} labelled components ({result.share:.1%}) name the "
          f"attribute value they are most selective for (best F1 of the firing set over {len(paths)} images with "
          "known attributes)")
    return result
