"""Medium-independent word-weight helpers: normalization, shading intensities, word joining, summaries.

Input everywhere is what :meth:`StoriClassifier.word_weights` returns: per class, per prompt, a list of
``(word, value)`` pairs. ``value`` is a weight (non-negative; normalized to sum 1 within the prompt, as in
the paper's figures) or, with ``signed=True``, an attribution (any sign; see :mod:`stori_pl.interpret.attribution`).

Shading: weights are shaded red on a log scale of ``weight / the prompt's average weight`` (white: a
quarter of the average or less, mid red: average, full red: 4x or more; the same scale for every prompt
and epoch); signed values red (positive) / blue (negative) by ``value / max |value| of the class``.

Relative or absolute: by default a word's shade and score is its weight relative to its prompt's average
(:func:`emphasis`), which cannot tell "this word went up" from "every other word went down". With
``absolute=True`` the values must be the absolute weights ``exp(log-weight)`` (1 = unchanged by training,
``StoriClassifier.word_weights(absolute=True)``) and are shown as they are: mid red = 1, full red = 4 or more.

Function words and punctuation (:mod:`stori_pl.text.function_words`) cannot explain a class by
themselves: :func:`top_words` leaves them out by default and :func:`markdown_top_words` can mark them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from stori_pl.text.function_words import is_function_word

Prompt = Sequence[tuple[str, float]]
ClassPrompts = Mapping[str, Sequence[Prompt]]

RED = (0.84, 0.15, 0.16)
BLUE = (0.13, 0.40, 0.75)
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


def emphasis(prompt: Prompt, absolute: bool = False) -> list[float]:
    """Each word's weight relative to the prompt's uniform weight (1 = average, 2 = twice the average).

    With ``absolute``, the weights as given (absolute weights, 1 = unchanged), checked finite and >= 0.
    """
    if absolute:
        normalize_prompt(prompt)  # validates
        return [float(v) for _, v in prompt]
    normed = normalize_prompt(prompt)
    return [v * len(normed) for _, v in normed]


def intensities(prompts: Sequence[Prompt], signed: bool, span: float = SPAN, absolute: bool = False) -> list[list[float]]:
    """Shade per word in [-1, 1] (negative only when ``signed``).

    Weights: log scale of the word's :func:`emphasis`, ``1/span`` (or less) → 0, the prompt's average
    weight (``absolute``: weight 1) → 0.5, ``span`` times that (or more) → 1. Fixed across prompts and
    epochs, so equal weights look equal everywhere. Signed values: ``value / max |value|`` over all ``prompts``.
    """
    if signed:
        peak = max((abs(float(v)) for p in prompts for _, v in p), default=0.0) or 1.0
        return [[float(v) / peak for _, v in p] for p in prompts]
    half = 2 * math.log(span)
    return [[min(1.0, max(0.0, 0.5 + math.log(r) / half)) if r > 0 else 0.0 for r in emphasis(p, absolute)] for p in prompts]


def prompt_text(words: Sequence[str]) -> str:
    """Join words back into a sentence (no space before punctuation)."""
    out = ""
    for w in words:
        out += w if (not out or joins(w)) else " " + w
    return out


def joins(word: str) -> bool:
    return word in _JOIN or (len(word) > 0 and all(c in _JOIN for c in word))


# ---------------------------------------------------------------------------------------------- layout
def wrap_words(words: Sequence[str], width: int, indent: int, raw: Sequence[str] | None = None) -> list[list[tuple[int, int]]]:
    """Greedy wrap: lines of (start column, word index); continuation lines start at ``indent``.

    ``raw``: the words without annotations (decides which words attach to the previous one).
    """
    lines: list[list[tuple[int, int]]] = [[]]
    col = indent
    for i, w in enumerate(words):
        gap = 0 if (not lines[-1] or joins((raw or words)[i])) else 1
        if lines[-1] and col + gap + len(w) > width:
            lines.append([])
            col, gap = indent, 0
        lines[-1].append((col + gap, i))
        col += gap + len(w)
    return lines



def rgba(intensity: float, alpha_max: float = 0.85) -> tuple[float, float, float, float]:
    base = RED if intensity >= 0 else BLUE
    return (*base, min(1.0, abs(intensity)) * alpha_max)



def top_words(
    classes: ClassPrompts, k: int = 10, min_count: int = 1, function_words: bool = False, absolute: bool = False,
    over: str = "occurrences",
) -> tuple[list[tuple[str, float, int]], list[tuple[str, float, int]]]:
    """Most emphasized / de-emphasized words over the given classes.

    A word's score is a geometric mean of its :func:`emphasis` (weight relative to its prompt's uniform weight;
    with ``absolute``, the absolute weight): over its occurrences (``over="occurrences"``, how strongly the word
    is weighted where it appears), or over all the given prompts, ×1 where it is absent (``over="prompts"``,
    how much the prompt set as a whole emphasizes it: a class summary, since a class's embedding averages its
    prompts, and a filler in one prompt of eight moves it less than a defining word emphasized in most).

    Args:
        classes: Per class, per prompt, ``(word, weight)`` pairs.
        k: Words per list.
        min_count: Only words occurring at least this often.
        function_words: Also rank function words and punctuation (default: left out, since "there ×1.6"
            says nothing about a class).
        absolute: The weights are absolute (``word_weights(absolute=True)``), not relative to the prompt.
        over: ``"occurrences"`` or ``"prompts"`` (see above).

    Returns:
        ``(emphasized, de_emphasized)``: lists of ``(word, score, count)``, at most ``k`` each.
    """
    if over not in ("occurrences", "prompts"):
        raise ValueError(f"over must be 'occurrences' or 'prompts', got {over!r}")
    logs: dict[str, list[float]] = {}
    n_prompts = 0
    for prompts in classes.values():
        for p in prompts:
            n_prompts += 1
            for (w, _), r in zip(p, emphasis(p, absolute)):
                if function_words or not is_function_word(w):
                    logs.setdefault(w, []).append(math.log(max(r, 1e-12)))
    scored = [(w, math.exp(sum(v) / (n_prompts if over == "prompts" else len(v))), len(v))
              for w, v in logs.items() if len(v) >= min_count]
    up = sorted((s for s in scored if s[1] >= 1.005), key=lambda s: -s[1])[:k]
    down = sorted((s for s in scored if s[1] <= 0.995), key=lambda s: s[1])[:k]
    return up, down


def markdown_top_words(classes: ClassPrompts, k: int = 5, function_words: str = "exclude", absolute: bool = False) -> str:
    """Markdown table: per class, the top-``k`` emphasized and de-emphasized words (``word ×ratio``).

    Args:
        classes: Per class, per prompt, ``(word, weight)`` pairs.
        k: Words per cell.
        function_words: ``"exclude"`` (default) leaves function words and punctuation out; ``"mark"`` ranks
            them too but shows them in italics with a ``°`` (:func:`top_words_legend` says so).
        absolute: The weights are absolute (``×`` is then the weight itself, 1 = unchanged).
    """
    if function_words not in ("exclude", "mark"):
        raise ValueError(f"function_words must be 'exclude' or 'mark', got {function_words!r}")
    mark = function_words == "mark"

    def cell(items):
        return ", ".join((f"_{_md(w)}°_" if mark and is_function_word(w) else _md(w)) + f" ×{s:.2f}" for w, s, _ in items) or "—"

    lines = ["| class | emphasized | de-emphasized |", "|---|---|---|"]
    for name, prompts in classes.items():
        up, down = top_words({name: prompts}, k, function_words=mark, absolute=absolute, over="prompts")
        lines.append(f"| {_md(name)} | {cell(up)} | {cell(down)} |")
    return "\n".join(lines)


def top_words_legend(function_words: str = "exclude", absolute: bool = False) -> str:
    """One line explaining a :func:`markdown_top_words` table made with the same options."""
    scale = "absolute weight (1 = unchanged)" if absolute else "weight relative to the prompt's average"
    note = "_word°_: function word or punctuation" if function_words == "mark" else "function words and punctuation left out"
    return f"×: {scale}, geometric mean over the class's prompts (×1 where a word is absent); {note}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")
