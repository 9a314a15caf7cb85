"""Word weights as ANSI-colored terminal text (plain text with relative weights when piped or NO_COLOR)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from stori_pl.interpret.viz.words import Prompt, emphasis, intensities, wrap_words

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
    absolute: bool = False,
    width: int | None = None,
) -> str:
    """Class name and prompts as text, words on a red (blue) background by weight (attribution).

    Without colors (``color=False``, or not a TTY when ``None``) notable words are annotated instead:
    ``word(x1.8)`` = 1.8 times the prompt's average weight (words at 1.5x or more); ``word(+0.12)`` for
    attributions (words at a quarter of the largest |value| or more). With ``absolute`` the values are
    absolute weights (``word_weights(absolute=True)``): ``word(x1.8)`` = weight 1.8 (1 = unchanged by
    training), annotated at 1.5 or more and at 1/1.5 or less, so lowered words show too.
    """
    color = use_color() if color is None else color
    width = width or max(40, min(shutil.get_terminal_size((100, 20)).columns, 160))
    shades = intensities(prompts, signed, absolute=absolute)
    out = [f"\x1b[1m{class_name}\x1b[0m" if color else f"== {class_name} =="]
    num_w = len(str(max(len(prompts), 1))) + 2
    for k, (p, sh) in enumerate(zip(prompts, shades)):
        ratios = emphasis(p, absolute) if not signed else [float(v) for _, v in p]
        words = []
        for (w, _), s, r in zip(p, sh, ratios):
            if color:
                level = min(4, int(abs(s) * 5 - 1e-9)) if abs(s) >= 0.2 else -1
                ramp = _RED_256 if s >= 0 else _BLUE_256
                words.append((w, f"\x1b[30;48;5;{ramp[level]}m{w}\x1b[0m" if level >= 0 else w))
            elif signed and abs(s) >= 0.25:
                words.append((w + f"({r:+.3g})",) * 2)
            elif not signed and (r >= 1.5 or (absolute and r <= 1 / 1.5)):
                words.append((w + f"(x{r:.2f})",) * 2)
            else:
                words.append((w, w))
        for j, line in enumerate(wrap_words([w for w, _ in words], width, num_w, raw=[w for w, _ in p])):
            text, col = (f"{k + 1}.".ljust(num_w) if j == 0 else " " * num_w), num_w
            for c, i in line:
                text += " " * (c - col) + words[i][1]
                col = c + len(words[i][0])
            out.append(text)
    if not prompts:
        out.append("  (no trainable prompts)")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- HTML
