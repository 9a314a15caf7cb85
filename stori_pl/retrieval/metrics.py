"""Preference-retrieval metrics and plots (SToRI Sec. 4.2, App. B, Figures 4–5). Pure torch + matplotlib.

- :func:`rank` orders images by score; :func:`average_precision` and :func:`precision_at_k` score a ranking
  against binary attribute labels (torchmetrics' retrieval metrics).
- Images fall into categories (e.g. the 8 combinations of 3 binary attributes). :func:`category_ratio_curves`
  gives, for each category ``c`` and rank ``n``, the ratio of ``c``'s images retrieved in the top ``n``
  (``|top-n ∩ c| / |c|``); :func:`curve_auc` is the mean of a curve over ``n = 1..N``, in ``[0, 1]``
  (1 = the category is retrieved first; a random ranking gives about 0.5).
- :func:`plot_ratio_curves` (Figure-4-like), :func:`plot_auc_vs_weight` (Figure-5-like),
  :func:`save_figure` (atomic PNG) and :func:`log_figure` (TensorBoard).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torchmetrics.functional.retrieval import (
    retrieval_average_precision,
    retrieval_precision,
)

from stori_pl.utils import atomic_path

__all__ = [
    "rank",
    "average_precision",
    "precision_at_k",
    "category_ratio_curves",
    "curve_auc",
    "category_names",
    "plot_ratio_curves",
    "plot_auc_vs_weight",
    "save_figure",
    "close_figure",
    "log_figure",
]


def _check(scores: torch.Tensor, other: torch.Tensor, what: str) -> None:
    if scores.ndim != 1 or other.shape != scores.shape:
        raise ValueError(f"scores [N] and {what} [N] must be 1-D of equal length, got {tuple(scores.shape)} and "
                         f"{tuple(other.shape)}")
    if scores.numel() == 0:
        raise ValueError("nothing to rank: scores are empty")


def rank(scores: torch.Tensor) -> torch.Tensor:
    """Indices ``[N]`` that sort ``scores [N]`` from best to worst (ties keep the input order)."""
    return torch.sort(scores, descending=True, stable=True).indices


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision of the ranking by ``scores [N]`` for binary ``labels [N]`` (0 when no positive)."""
    _check(scores, labels, "labels")
    return float(retrieval_average_precision(scores.float(), labels.bool()))


def precision_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of positives among the top ``k`` (``k`` larger than N counts the missing ranks as misses)."""
    _check(scores, labels, "labels")
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    return float(retrieval_precision(scores.float(), labels.bool(), top_k=k))


def category_ratio_curves(scores: torch.Tensor, categories: torch.Tensor, num_categories: int | None = None) -> torch.Tensor:
    """Ratio of each category retrieved within the top ``n``, for ``n = 1..N``.

    Args:
        scores: ``[N]`` similarity of each image to the query.
        categories: ``[N]`` long category id of each image (``0..C-1``).
        num_categories: ``C``; default ``max(categories) + 1``.

    Returns:
        ``[C, N]`` float: entry ``[c, n-1] = |top-n ∩ c| / |c|`` (0 for an empty category).
    """
    _check(scores, categories, "categories")
    C = int(num_categories if num_categories is not None else int(categories.max()) + 1)
    ordered = categories.long()[rank(scores)]  # [N]
    onehot = torch.nn.functional.one_hot(ordered, C).T.float()  # [C, N]
    counts = onehot.cumsum(dim=1)  # [C, N]
    sizes = onehot.sum(dim=1, keepdim=True)  # [C, 1]
    return torch.where(sizes > 0, counts / sizes.clamp_min(1), 0.0)


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under ratio curves ``[C, N]`` normalized to ``[0, 1]``: the mean over ``n = 1..N``. Returns ``[C]``."""
    return curves.mean(dim=-1)


def category_names(attributes: Sequence[str]) -> list[str]:
    """Names of the ``2**A`` categories of ``A`` binary attributes; bit ``a`` of the id is attribute ``a``.

    ``["Smiling", "Eyeglasses"]`` → ``["-Smiling -Eyeglasses", "+Smiling -Eyeglasses", ...]``.
    """
    return [" ".join(("+" if (c >> a) & 1 else "-") + name for a, name in enumerate(attributes))
            for c in range(2 ** len(attributes))]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def close_figure(fig) -> None:
    """Close a figure made by this module's plots (frees pyplot's reference to it)."""
    _plt().close(fig)


def plot_ratio_curves(curves: Mapping[str, torch.Tensor], names: Sequence[str], title: str = ""):
    """Figure-4-like plot: one panel per setting (e.g. ``{"w=0.5": [C, N], "plain": ..., "w=1.5": ...}``),
    one line per category (ratio retrieved vs rank n).

    Returns:
        A matplotlib ``Figure``.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (label, cur) in zip(axes[0], curves.items()):
        n = torch.arange(1, cur.shape[1] + 1)
        for c, name in enumerate(names):
            ax.plot(n, cur[c], color=cmap(c % 10), lw=1.4, label=name)
        ax.set_title(label)
        ax.set_xlabel("rank n")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ratio of category retrieved")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="category",
                       title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_auc_vs_weight(weights: Sequence[float], aucs: Mapping[str, torch.Tensor], names: Sequence[str], title: str = ""):
    """Figure-5-like plot: AUC of each category against the target attribute's weight, one panel per method.

    Args:
        weights: ``[W]`` swept weights.
        aucs: method name → ``[W, C]`` AUCs (e.g. ``{"stori": ..., "prompt_weighting": ...}``).
        names: ``C`` category names.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(aucs), figsize=(4.5 * len(aucs), 3.6), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (method, auc) in zip(axes[0], aucs.items()):
        for c, name in enumerate(names):
            ax.plot(list(weights), auc[:, c], marker="o", ms=3, color=cmap(c % 10), label=name)
        ax.axvline(1.0, color="gray", ls=":", lw=1)
        ax.set_title(method)
        ax.set_xlabel("weight of the target attribute")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AUC (ratio retrieved)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="category", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a figure as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    close_figure(fig)


def log_figure(logger, tag: str, fig, step: int = 0) -> None:
    """Log a figure to TensorBoard: ``logger`` is a ``SummaryWriter`` or a Lightning ``TensorBoardLogger``."""
    writer = getattr(logger, "experiment", logger)
    writer.add_figure(tag, fig, global_step=step, close=False)
