"""Word-weight figures with matplotlib: one page per class, PNG export, figure → array for TensorBoard.

The renderer draws one monospace text object per line and one polygon collection per page, so 60
prompts of 60 tokens render in well under a second. Shading: see :mod:`stori_pl.interpret.viz.words`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from stori_pl.interpret.viz.words import SPAN, Prompt, intensities, rgba, wrap_words
from stori_pl.utils import atomic_path

_LINE_H = 1.55  # line height, in em


Row = tuple[str, list[tuple[int, int, float]]]
"""One printed line: its text and its shaded cells ``(column, length, shade)``."""


def plot_word_weights(
    class_name: str,
    prompts: Sequence[Prompt],
    *,
    subtitle: str | None = None,
    signed: bool = False,
    absolute: bool = False,
    width: int = 110,
    lines_per_page: int = 60,
    fontsize: float = 10.0,
    dpi: int = 100,
):
    """Render one class's prompts with each word shaded by its weight; one figure per page.

    Args:
        class_name: Shown in the title.
        prompts: Per prompt, ``(word, weight)`` pairs (weights are normalized per prompt for shading).
        subtitle: Extra title text, e.g. ``"epoch 3"``.
        signed: Values are attributions (red positive, blue negative, scaled by the class's max |value|).
        absolute: Values are absolute weights (``word_weights(absolute=True)``; mid red = 1 = unchanged),
            not weights normalized within the prompt.
        width: Characters per line before wrapping.
        lines_per_page: Page height; prompts are never split across pages.
        fontsize: Points.
        dpi: Resolution of the figure.

    Returns:
        ``list[matplotlib.figure.Figure]`` (at least one; a class without prompts gives a page saying so).
    """
    shades = intensities(prompts, signed, absolute=absolute)
    num_w = len(str(max(len(prompts), 1))) + 2  # "12. "
    blocks = [_prompt_rows(k, [w for w, _ in p], sh, width, num_w) for k, (p, sh) in enumerate(zip(prompts, shades))]
    pages = _paginate(blocks, lines_per_page)
    figs = []
    for n, page in enumerate(pages):
        title = class_name + (f" — {subtitle}" if subtitle else "")
        if len(pages) > 1:
            title += f"  (page {n + 1}/{len(pages)})"
        figs.append(_draw_page(page, title, _legend(signed, absolute), width, fontsize, dpi))
    return figs


def _prompt_rows(k: int, words: list[str], shades: Sequence[float], width: int, num_w: int) -> list[Row]:
    """Prompt number ``k`` wrapped to ``width`` characters (numbered ``"k+1."`` on its first line)."""
    rows = []
    for j, line in enumerate(wrap_words(words, width, num_w)):
        chars = [" "] * width
        label = f"{k + 1}." if j == 0 else ""
        chars[: len(label)] = label
        cells = []
        for col, i in line:
            end = min(col + len(words[i]), width)
            chars[col:end] = words[i][: end - col]
            cells.append((col, end - col, shades[i]))
        rows.append(("".join(chars).rstrip(), cells))
    return rows


def _paginate(blocks: list[list[Row]], lines_per_page: int) -> list[list[list[Row]]]:
    """Group prompts (blocks of rows, one blank line after each) into pages; a prompt is never split."""
    pages: list[list[list[Row]]] = [[]]
    used = 0
    for rows in blocks:
        if pages[-1] and used + len(rows) + 1 > lines_per_page:
            pages.append([])
            used = 0
        pages[-1].append(rows)
        used += len(rows) + 1
    return pages


def _legend(signed: bool, absolute: bool = False) -> str:
    """The line under the title explaining the shading."""
    if signed:
        return "red: pushes towards the class, blue: away (shade = value / max |value|)"
    if absolute:
        return (f"darker = higher weight; mid red = weight 1 (unchanged by training), full red = {SPAN:g} or more, "
                f"white = 1/{SPAN:g} or less (log scale; absolute weights)")
    return (f"darker = higher weight; mid red = the prompt's average weight, full red = {SPAN:g}x average "
            "or more (log scale; weights sum to 1 within each prompt)")


def _draw_page(page: list[list[Row]], title: str, legend: str, width: int, fontsize: float, dpi: int):
    """One figure: title, legend, then each prompt's rows with a shaded box behind every weighted word."""
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    char_w, line_h = _char_px(fontsize, dpi) / dpi, _LINE_H * fontsize / 72  # inches
    margin = 2
    n_lines = sum(len(r) + 1 for r in page) + 3 if page else 4
    fig = Figure(figsize=((width + 2 * margin) * char_w, (n_lines + 1) * line_h), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-margin, width + margin)
    ax.set_ylim(n_lines + 1, 0)
    ax.axis("off")
    ax.text(0, 1.0, title, fontsize=fontsize * 1.3, fontweight="bold", va="center", family="DejaVu Sans")
    ax.text(0, 2.2, legend, fontsize=fontsize * 0.85, color="0.35", va="center", family="DejaVu Sans")
    verts, colors = [], []
    y = 3.5
    if not page:
        ax.text(0, y + 0.5, "(no trainable prompts)", fontsize=fontsize, va="center", family="DejaVu Sans Mono")
    for rows in page:
        for text, cells in rows:
            for col, length, shade in cells:
                if abs(shade) > 0.01:
                    x0, x1 = col - 0.15, col + length + 0.15
                    verts.append([(x0, y + 0.08), (x1, y + 0.08), (x1, y + 0.92), (x0, y + 0.92)])
                    colors.append(rgba(shade))
            ax.text(0, y + 0.5, text, fontsize=fontsize, va="center_baseline", family="DejaVu Sans Mono")
            y += 1
        y += 1
    if verts:
        ax.add_collection(PolyCollection(verts, facecolors=colors, edgecolors="none", zorder=0))
    return fig


@functools.lru_cache(maxsize=8)
def _char_px(fontsize: float, dpi: int) -> float:
    """Measured advance of one monospace character in pixels (Agg hints advances to whole pixels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(dpi=dpi)
    text = fig.text(0, 0, "x" * 200, fontsize=fontsize, family="DejaVu Sans Mono")
    return text.get_window_extent(FigureCanvasAgg(fig).get_renderer()).width / 200


def figure_to_array(fig) -> np.ndarray:
    """Rasterize a figure: ``uint8 [H, W, 3]`` (for ``SummaryWriter.add_image(..., dataformats="HWC")``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_pages_png(path: str | os.PathLike, figs: Sequence, max_height: int = 6000) -> list[str]:
    """Stack figures vertically into PNG files (``name.png``, ``name_p2.png`` ... when taller than
    ``max_height`` pixels), written atomically; returns the paths written."""
    from pathlib import Path

    from PIL import Image


    path = Path(path)
    groups: list[list[np.ndarray]] = []
    height = 0
    for fig in figs:
        img = figure_to_array(fig)  # [H, W, 3]
        if not groups or height + img.shape[0] > max_height:
            groups.append([])
            height = 0
        groups[-1].append(img)
        height += img.shape[0]
    written = []
    for n, imgs in enumerate(groups):
        width = max(i.shape[1] for i in imgs)
        imgs = [np.pad(i, ((0, 0), (0, width - i.shape[1]), (0, 0)), constant_values=255) for i in imgs]
        target = path if n == 0 else path.with_name(f"{path.stem}_p{n + 1}{path.suffix}")
        with atomic_path(target) as tmp:
            Image.fromarray(np.concatenate(imgs)).save(tmp, format="PNG")
        written.append(str(target))
    return written


def save_word_weights_png(path: str | os.PathLike, class_name: str, prompts: Sequence[Prompt], **kwargs) -> list[str]:
    """Render one class (:func:`plot_word_weights` arguments) and save it with :func:`save_pages_png`."""
    max_height = kwargs.pop("max_height", 6000)
    return save_pages_png(path, plot_word_weights(class_name, prompts, **kwargs), max_height=max_height)


# ---------------------------------------------------------------------------------------------- summaries
