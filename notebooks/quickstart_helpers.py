"""Helpers of ``notebooks/quickstart.ipynb``: retrieval grids and a short SToRI run on the toy world.

Everything here is small glue around the public API (``load_clip``, ``WeightedTextEncoder``, the toy
datamodule, ``StoriClassifier``) so that notebook cells stay one-liners.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stori_pl.data.features import image_features
from stori_pl.text.clip import load_clip
from stori_pl.text.encoder import WeightedTextEncoder
from stori_pl.toy.data import TOY_RETRIEVAL_START_BLOCK, load_toy_attributes


def toy_pool(root: str | Path = "data", task: int | None = 0, without_full_match: bool = True,
             cache_dir: str | None = None) -> tuple[list[Path], torch.Tensor]:
    """Image paths and features ``[N, D]`` of the toy attribute set (generated under ``root`` if absent).

    Args:
        root: Data folder.
        task: Keep only the pool of this retrieval task (:data:`stori_pl.toy.data.TOY_RETRIEVAL_TASKS`; 8
            categories of its 3 attributes); None keeps every image.
        without_full_match: Drop the category that has all 3 attributes, so a prompt naming all three must
            trade them off — which is where weights show.
        cache_dir: Feature cache folder.
    """
    ds = load_toy_attributes(root)
    paths = list(ds.paths)
    if task is not None:  # file names are images/t<task>_<category bits>_<i>.png
        paths = [p for p in paths if p.name.startswith(f"t{task}_") and not (without_full_match and p.name.startswith(f"t{task}_111_"))]
    feats, kept = image_features(paths, "stori-toy", "builtin", cache_dir=cache_dir)
    return [paths[i] for i in kept], feats


def retrieve(prompts: Sequence[str], features: torch.Tensor, k: int = 8, start_block: int | None = None) -> torch.Tensor:
    """Top-``k`` image indices ``[len(prompts), k]`` for prompts in the weight syntax, e.g. ``"a (red:2) star"``."""
    model, _, tokenizer = load_clip("stori-toy", "builtin")
    k0 = TOY_RETRIEVAL_START_BLOCK if start_block is None else start_block
    emb = WeightedTextEncoder(model, start_block=k0).encode_prompts(list(prompts), tokenizer)  # [P, D]
    return (emb @ features.T).topk(k, dim=-1).indices  # [P, k]


def retrieval_grid(prompts: Sequence[str], paths: Sequence[Path], top: torch.Tensor, scale: int = 2):
    """A matplotlib figure: one row of retrieved images per prompt."""
    import matplotlib.pyplot as plt

    rows, k = top.shape
    fig, axes = plt.subplots(rows, 1, figsize=(1.1 * k * scale / 2 + 1, 1.3 * rows * scale / 2 + 0.3), squeeze=False)
    for r, ax in enumerate(axes[:, 0]):
        strip = np.concatenate([np.asarray(Image.open(paths[i]).convert("RGB")) for i in top[r].tolist()], axis=1)
        ax.imshow(strip, interpolation="nearest")
        ax.set_title(prompts[r], fontsize=9, loc="left")
        ax.axis("off")
    fig.tight_layout()
    return fig


def attribute_counts(top: torch.Tensor, paths: Sequence[Path], root: str | Path,
                     attributes: Sequence[str]) -> list[dict[str, int]]:
    """Per prompt: how many of its retrieved images (``top`` indexes ``paths``) have each attribute."""
    ds = load_toy_attributes(root)
    row = {Path(p): i for i, p in enumerate(ds.paths)}
    cols = [ds.index(a) for a in attributes]
    labels = ds.labels[[row[Path(p)] for p in paths]]  # [N, A_all] bool, in pool order
    return [{a: int(labels[top[r], c].sum()) for a, c in zip(attributes, cols)} for r in range(len(top))]


def train_toy_stori(root: str | Path = "data", classes: Sequence[str] | None = None, epochs: int = 40,
                    start_block: int | None = None, lr: float = 0.1, shots: int = 16, seed: int = 1,
                    cupl: str | None = None, pretrained: str = "builtin"):
    """Few-shot SToRI on ToyShapes with a plain Lightning ``Trainer`` (CPU, no logger).

    Args:
        root: Data folder (``root/toy_shapes`` is generated when absent).
        classes: Subset of class names (e.g. two that differ in one word).
        epochs: Training epochs (one full-batch step each at 16 shots).
        start_block: First reweighted block (default: :data:`stori_pl.toy.data.TOY_START_BLOCK`).
        lr: Adam learning rate of the log-weights.
        shots: Training images per class.
        seed: Few-shot sampling and training seed.
        cupl: Another CuPL-style JSON file (default: the generated one).
        pretrained: Weights of `stori-toy` (default: the shipped ones).

    Returns:
        ``(model, datamodule, {"zero_shot": acc, "stori": acc})`` with test accuracies.
    """
    import lightning as L

    from stori_pl.lightning.callbacks import ZeroShotComparison
    from stori_pl.models import StoriClassifier
    from stori_pl.toy.data import TOY_START_BLOCK, ToyShapes

    L.seed_everything(seed, verbose=False)
    dm = ToyShapes(root=str(root), shots=shots, seed=seed, classes=list(classes) if classes else None, cupl=cupl,
                   pretrained=pretrained)
    model = StoriClassifier(clip_model="stori-toy", pretrained=pretrained, lr=lr,
                            start_block=TOY_START_BLOCK if start_block is None else start_block)
    compare = ZeroShotComparison()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[compare],
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    return model, dm, {"zero_shot": compare.zero_shot_acc, "stori": result["test/acc"]}
