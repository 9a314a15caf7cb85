"""Word-weight rendering: matplotlib pages, ANSI terminal text, a self-contained HTML page, summaries.

Input everywhere is what :meth:`StoriClassifier.word_weights` returns: per class, per prompt, a list of
``(word, value)`` pairs. ``value`` is a weight (non-negative; normalized to sum 1 within the prompt, as in
the paper's figures) or, with ``signed=True``, an attribution (any sign; see :mod:`stori_pl.attribution`).
The JSON export of the same data is in :mod:`stori_pl.callbacks`.

Shading: weights are shaded red on a log scale of ``weight / the prompt's average weight`` (white: a
quarter of the average or less, mid red: average, full red: 4x or more; the same scale for every prompt
and epoch); signed values red (positive) / blue (negative) by ``value / max |value| of the class``.
The figure renderer draws one monospace text object per line and one polygon collection per page, so 60
prompts of 60 tokens render in well under a second.
"""

from __future__ import annotations

import functools
import html
import math
import os
import shutil
import sys
from collections.abc import Mapping, Sequence

import numpy as np

Prompt = Sequence[tuple[str, float]]
ClassPrompts = Mapping[str, Sequence[Prompt]]

_RED = (0.84, 0.15, 0.16)
_BLUE = (0.13, 0.40, 0.75)
_LINE_H = 1.55  # line height, in em
SPAN = 4.0  # weights from 1/SPAN to SPAN times the prompt's average span the red scale
_JOIN = set(",.;:!?)]}%'\"") | {"'s", "'t", "'re", "'ll", "'d", "'m", "'ve"}


# ---------------------------------------------------------------------------------------------- values
def normalize_prompt(prompt: Prompt) -> list[tuple[str, float]]:
    """Scale a prompt's weights to sum to 1 (the paper's display convention).

    Raises:
        ValueError: if a weight is negative or not finite.
    """
    values = [float(v) for _, v in prompt]
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"word weights must be finite and >= 0, got {values}; use signed=True for attributions")
    total = sum(values)
    if total <= 0:
        return [(w, 0.0) for w, _ in prompt]
    return [(w, v / total) for (w, _), v in zip(prompt, values)]


def emphasis(prompt: Prompt) -> list[float]:
    """Each word's weight relative to the prompt's uniform weight (1 = average, 2 = twice the average)."""
    normed = normalize_prompt(prompt)
    return [v * len(normed) for _, v in normed]


def _intensities(prompts: Sequence[Prompt], signed: bool, span: float = SPAN) -> list[list[float]]:
    """Shade per word in [-1, 1] (negative only when ``signed``).

    Weights: log scale of the word's :func:`emphasis`, ``1/span`` (or less) → 0, the prompt's average
    weight → 0.5, ``span`` times the average (or more) → 1. Fixed across prompts and epochs, so equal
    weights look equal everywhere. Signed values: ``value / max |value|`` over all ``prompts``.
    """
    if signed:
        peak = max((abs(float(v)) for p in prompts for _, v in p), default=0.0) or 1.0
        return [[float(v) / peak for _, v in p] for p in prompts]
    half = 2 * math.log(span)
    return [[min(1.0, max(0.0, 0.5 + math.log(r) / half)) if r > 0 else 0.0 for r in emphasis(p)] for p in prompts]


def prompt_text(words: Sequence[str]) -> str:
    """Join words back into a sentence (no space before punctuation)."""
    out = ""
    for w in words:
        out += w if (not out or _joins(w)) else " " + w
    return out


def _joins(word: str) -> bool:
    return word in _JOIN or (len(word) > 0 and all(c in _JOIN for c in word))


# ---------------------------------------------------------------------------------------------- layout
def _wrap(words: Sequence[str], width: int, indent: int, raw: Sequence[str] | None = None) -> list[list[tuple[int, int]]]:
    """Greedy wrap: lines of (start column, word index); continuation lines start at ``indent``.

    ``raw``: the words without annotations (decides which words attach to the previous one).
    """
    lines: list[list[tuple[int, int]]] = [[]]
    col = indent
    for i, w in enumerate(words):
        gap = 0 if (not lines[-1] or _joins((raw or words)[i])) else 1
        if lines[-1] and col + gap + len(w) > width:
            lines.append([])
            col, gap = indent, 0
        lines[-1].append((col + gap, i))
        col += gap + len(w)
    return lines


def _color(intensity: float, alpha_max: float = 0.85) -> tuple[float, float, float, float]:
    base = _RED if intensity >= 0 else _BLUE
    return (*base, min(1.0, abs(intensity)) * alpha_max)


def plot_word_weights(
    class_name: str,
    prompts: Sequence[Prompt],
    *,
    subtitle: str | None = None,
    signed: bool = False,
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
        width: Characters per line before wrapping.
        lines_per_page: Page height; prompts are never split across pages.
        fontsize: Points.
        dpi: Resolution of the figure.

    Returns:
        ``list[matplotlib.figure.Figure]`` (at least one; a class without prompts gives a page saying so).
    """
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    shades = _intensities(prompts, signed)
    num_w = len(str(max(len(prompts), 1))) + 2  # "12. "
    blocks = []  # per prompt: list of (text line, [(col, len, shade)])
    for k, (p, sh) in enumerate(zip(prompts, shades)):
        words = [w for w, _ in p]
        rows = []
        for j, line in enumerate(_wrap(words, width, num_w)):
            chars = [" "] * width
            label = f"{k + 1}." if j == 0 else ""
            chars[: len(label)] = label
            cells = []
            for col, i in line:
                end = min(col + len(words[i]), width)
                chars[col:end] = words[i][: end - col]
                cells.append((col, end - col, sh[i]))
            rows.append(("".join(chars).rstrip(), cells))
        blocks.append(rows)

    pages: list[list[list]] = [[]]
    used = 0
    for rows in blocks:
        if pages[-1] and used + len(rows) + 1 > lines_per_page:
            pages.append([])
            used = 0
        pages[-1].append(rows)
        used += len(rows) + 1

    if signed:
        legend = "red: pushes towards the class, blue: away (shade = value / max |value|)"
    else:
        legend = (f"darker = higher weight; mid red = the prompt's average weight, full red = {SPAN:g}x average "
                  "or more (log scale; weights sum to 1 within each prompt)")
    char_w, line_h = _char_px(fontsize, dpi) / dpi, _LINE_H * fontsize / 72  # inches
    margin = 2
    figs = []
    for n, page in enumerate(pages):
        n_lines = sum(len(r) + 1 for r in page) + 3 if page else 4
        fig = Figure(figsize=((width + 2 * margin) * char_w, (n_lines + 1) * line_h), dpi=dpi)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(-margin, width + margin)
        ax.set_ylim(n_lines + 1, 0)
        ax.axis("off")
        title = class_name + (f" — {subtitle}" if subtitle else "")
        if len(pages) > 1:
            title += f"  (page {n + 1}/{len(pages)})"
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
                        colors.append(_color(shade))
                ax.text(0, y + 0.5, text, fontsize=fontsize, va="center_baseline", family="DejaVu Sans Mono")
                y += 1
            y += 1
        if verts:
            ax.add_collection(PolyCollection(verts, facecolors=colors, edgecolors="none", zorder=0))
        figs.append(fig)
    return figs


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

    from stori_pl.utils import atomic_path

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
def top_words(
    classes: ClassPrompts, k: int = 10, min_count: int = 1
) -> tuple[list[tuple[str, float, int]], list[tuple[str, float, int]]]:
    """Most emphasized / de-emphasized words over the given classes.

    A word's score is the geometric mean, over its occurrences, of its :func:`emphasis` (weight relative
    to its prompt's uniform weight).

    Returns:
        ``(emphasized, de_emphasized)``: lists of ``(word, score, count)``, at most ``k`` each.
    """
    logs: dict[str, list[float]] = {}
    for prompts in classes.values():
        for p in prompts:
            for (w, _), r in zip(p, emphasis(p)):
                logs.setdefault(w, []).append(math.log(max(r, 1e-12)))
    scored = [(w, math.exp(sum(v) / len(v)), len(v)) for w, v in logs.items() if len(v) >= min_count]
    up = sorted((s for s in scored if s[1] >= 1.005), key=lambda s: -s[1])[:k]
    down = sorted((s for s in scored if s[1] <= 0.995), key=lambda s: s[1])[:k]
    return up, down


def markdown_top_words(classes: ClassPrompts, k: int = 5) -> str:
    """Markdown table: per class, the top-``k`` emphasized and de-emphasized words (``word ×ratio``)."""
    def cell(items):
        return ", ".join(f"{_md(w)} ×{s:.2f}" for w, s, _ in items) or "—"

    lines = ["| class | emphasized | de-emphasized |", "|---|---|---|"]
    for name, prompts in classes.items():
        up, down = top_words({name: prompts}, k)
        lines.append(f"| {_md(name)} | {cell(up)} | {cell(down)} |")
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


# ---------------------------------------------------------------------------------------------- terminal
_RED_256 = (224, 217, 210, 203, 196)
_BLUE_256 = (189, 153, 117, 75, 33)


def use_color(stream=None) -> bool:
    """Colors only on a TTY, and never when ``NO_COLOR`` is set."""
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def render_terminal(
    class_name: str,
    prompts: Sequence[Prompt],
    *,
    color: bool | None = None,
    signed: bool = False,
    width: int | None = None,
) -> str:
    """Class name and prompts as text, words on a red (blue) background by weight (attribution).

    Without colors (``color=False``, or not a TTY when ``None``) notable words are annotated instead:
    ``word(x1.8)`` = 1.8 times the prompt's average weight (words at 1.5x or more); ``word(+0.12)`` for
    attributions (words at a quarter of the largest |value| or more).
    """
    color = use_color() if color is None else color
    width = width or max(40, min(shutil.get_terminal_size((100, 20)).columns, 160))
    shades = _intensities(prompts, signed)
    out = [f"\x1b[1m{class_name}\x1b[0m" if color else f"== {class_name} =="]
    num_w = len(str(max(len(prompts), 1))) + 2
    for k, (p, sh) in enumerate(zip(prompts, shades)):
        ratios = emphasis(p) if not signed else [float(v) for _, v in p]
        words = []
        for (w, _), s, r in zip(p, sh, ratios):
            if color:
                level = min(4, int(abs(s) * 5 - 1e-9)) if abs(s) >= 0.2 else -1
                ramp = _RED_256 if s >= 0 else _BLUE_256
                words.append((w, f"\x1b[30;48;5;{ramp[level]}m{w}\x1b[0m" if level >= 0 else w))
            elif signed and abs(s) >= 0.25:
                words.append((w + f"({r:+.3g})",) * 2)
            elif not signed and r >= 1.5:
                words.append((w + f"(x{r:.2f})",) * 2)
            else:
                words.append((w, w))
        for j, line in enumerate(_wrap([w for w, _ in words], width, num_w, raw=[w for w, _ in p])):
            text, col = (f"{k + 1}.".ljust(num_w) if j == 0 else " " * num_w), num_w
            for c, i in line:
                text += " " * (c - col) + words[i][1]
                col = c + len(words[i][0])
            out.append(text)
    if not prompts:
        out.append("  (no trainable prompts)")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- HTML
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
input{font-size:1.1em;padding:.3em;width:24em}section{margin:1.2em 0;border-top:1px solid #ddd}
h2{font-size:1.15em;margin:.6em 0}ol{font-family:ui-monospace,monospace;line-height:1.7}
li span{border-radius:3px;padding:0 1px}.legend{color:#666;font-size:.9em}"""
_LEVELS = 20  # shades in the HTML page (one CSS class each keeps big pages small)
_JS = """function f(q){q=q.toLowerCase();let n=0;for(const s of document.querySelectorAll('section'))
{const h=s.dataset.name.includes(q);s.hidden=!h;n+=h}document.getElementById('n').textContent=n}"""


def render_html(
    classes: ClassPrompts,
    *,
    title: str = "SToRI word weights",
    signed: bool = False,
    intro: str | None = None,
) -> str:
    """A self-contained HTML page of all classes (inline CSS/JS, no network), searchable by class name."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}\n{_shade_css()}</style><script>{_JS}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    legend = (
        "red: pushes towards the class, blue: away" if signed
        else f"darker = higher weight; mid red = the prompt's average, full red = {SPAN:g}x average or more; "
        "hover a word for its weight (weights sum to 1 within each prompt)"
    )
    parts.append(
        f"<p><input id='q' type='search' placeholder='search class name' oninput='f(this.value)' autofocus> "
        f"<span id='n'>{len(classes)}</span> classes</p><p class='legend'>{legend}</p>"
    )
    for name, prompts in classes.items():
        parts.append(f"<section data-name='{html.escape(name.lower(), quote=True)}'><h2>{html.escape(name)}</h2><ol>")
        for p, sh in zip(prompts, _intensities(prompts, signed)):
            values = [float(v) for _, v in p] if signed else [v for _, v in normalize_prompt(p)]
            ratios = [1.0] * len(p) if signed else emphasis(p)
            spans = []
            for (w, _), v, s, ratio in zip(p, values, sh, ratios):
                level = round(abs(s) * _LEVELS)
                cls = f" class={'r' if s >= 0 else 'b'}{level}" if level else ""
                tip = f"{v:+.4g}" if signed else f"{v:.4f} ({ratio:.2f}x average)"
                sep = "" if (not spans or _joins(w)) else " "
                spans.append(f"{sep}<span{cls} title='{tip}'>{html.escape(w)}</span>")
            parts.append("<li>" + "".join(spans) + "</li>")
        parts.append("</ol></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _shade_css() -> str:
    rules = []
    for prefix, sign in (("r", 1), ("b", -1)):
        for level in range(1, _LEVELS + 1):
            r, g, b, a = _color(sign * level / _LEVELS)
            rules.append(f".{prefix}{level}{{background:rgba({r * 255:.0f},{g * 255:.0f},{b * 255:.0f},{a:.2f})}}")
    return "".join(rules)


def write_html(path: str | os.PathLike, classes: ClassPrompts, **kwargs) -> None:
    """:func:`render_html` written atomically to ``path``."""
    from stori_pl.utils import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(render_html(classes, **kwargs))
