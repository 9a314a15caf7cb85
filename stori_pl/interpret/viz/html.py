"""A self-contained, searchable HTML page of word weights (one CSS class per shade keeps big pages small)."""

from __future__ import annotations

import html
import os

from stori_pl.interpret.viz.words import (
    SPAN,
    ClassPrompts,
    emphasis,
    intensities,
    joins,
    normalize_prompt,
    rgba,
)
from stori_pl.utils import atomic_write

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
    absolute: bool = False,
    intro: str | None = None,
) -> str:
    """A self-contained HTML page of all classes (inline CSS/JS, no network), searchable by class name.

    ``absolute``: the values are absolute weights (``word_weights(absolute=True)``, 1 = unchanged), shaded
    and shown as they are instead of relative to the prompt's average.
    """
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}\n{_shade_css()}</style><script>{_JS}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    legend = (
        "red: pushes towards the class, blue: away" if signed
        else f"darker = higher weight; mid red = weight 1 (unchanged by training), full red = {SPAN:g} or more; "
        "hover a word for its weight (absolute weights)" if absolute
        else f"darker = higher weight; mid red = the prompt's average, full red = {SPAN:g}x average or more; "
        "hover a word for its weight (weights sum to 1 within each prompt)"
    )
    parts.append(
        f"<p><input id='q' type='search' placeholder='search class name' oninput='f(this.value)' autofocus> "
        f"<span id='n'>{len(classes)}</span> classes</p><p class='legend'>{legend}</p>"
    )
    for name, prompts in classes.items():
        parts.append(f"<section data-name='{html.escape(name.lower(), quote=True)}'><h2>{html.escape(name)}</h2><ol>")
        for p, sh in zip(prompts, intensities(prompts, signed, absolute=absolute)):
            values = [float(v) for _, v in p] if signed or absolute else [v for _, v in normalize_prompt(p)]
            ratios = [1.0] * len(p) if signed else emphasis(p, absolute)
            spans = []
            for (w, _), v, s, ratio in zip(p, values, sh, ratios):
                level = round(abs(s) * _LEVELS)
                cls = f" class={'r' if s >= 0 else 'b'}{level}" if level else ""
                tip = f"{v:+.4g}" if signed else f"weight {v:.3g}" if absolute else f"{v:.4f} ({ratio:.2f}x average)"
                sep = "" if (not spans or joins(w)) else " "
                spans.append(f"{sep}<span{cls} title='{tip}'>{html.escape(w)}</span>")
            parts.append("<li>" + "".join(spans) + "</li>")
        parts.append("</ol></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _shade_css() -> str:
    rules = []
    for prefix, sign in (("r", 1), ("b", -1)):
        for level in range(1, _LEVELS + 1):
            r, g, b, a = rgba(sign * level / _LEVELS)
            rules.append(f".{prefix}{level}{{background:rgba({r * 255:.0f},{g * 255:.0f},{b * 255:.0f},{a:.2f})}}")
    return "".join(rules)


def write_html(path: str | os.PathLike, classes: ClassPrompts, **kwargs) -> None:
    """:func:`render_html` written atomically to ``path``."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(render_html(classes, **kwargs))
