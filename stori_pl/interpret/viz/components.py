"""Views of SAE component attributions: a terminal table and a self-contained HTML page with image strips.

A *row* is a plain dict: ``component`` (latent index), ``score`` (Act×Grad, or the class mean), optionally
``activation`` (the latent's value on the image), ``label``,
``alignment``, ``clarity`` (from the component table), ``images`` (paths of its top-activating images) and,
for class-level lists, ``share``, ``expected_label``, ``unexpected``, ``flagged``. ``compare`` maps a method
label to its ranking (component indices), shown beside Act×Grad.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence

from stori_pl.data.image_io import BadImageError, open_rgb

STRIP_IMAGES = 6  # top-activating images shown per component
THUMB = 56  # pixels per thumbnail in the HTML strip

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;
vertical-align:middle}th{background:#f4f4f4}.num{text-align:right;font-family:ui-monospace,monospace}
.flag{color:#b00;font-weight:600}img.t{width:%dpx;height:%dpx;margin-right:2px;image-rendering:pixelated}
.legend{color:#666;font-size:.9em}""" % (THUMB, THUMB)


def format_rows(rows: Sequence[dict], title: str, compare: dict[str, list[int]] | None = None,
                class_level: bool = False) -> str:
    """Terminal table of ``rows`` (best first) under ``title``; ``compare`` adds one column per method."""
    lines = [title]
    head = f"  {'#':>3} {'comp':>6} {'score':>9}"
    acts = bool(rows) and "activation" in rows[0]
    if acts:
        head += f" {'z':>7}"
    if class_level:
        head += f" {'share':>6}"
    head += f"  {'label':<16} {'align':>6} {'clarity':>7}"
    if class_level:
        head += f"  {'class word':<14} {'unexp':>6}"
    compare = compare or {}
    for name in compare:
        head += f"  {name:>13}"
    lines.append(head)
    for rank, r in enumerate(rows, 1):
        line = f"  {rank:>3} {r['component']:>6} {r['score']:>+9.4f}"
        if acts:
            line += f" {r['activation']:>7.3f}"
        if class_level:
            line += f" {r['share']:>6.1%}"
        line += f"  {str(r.get('label', '?'))[:16]:<16} {r.get('alignment', float('nan')):>6.3f} " \
                f"{r.get('clarity', float('nan')):>7.3f}"
        if class_level:
            line += f"  {str(r['expected_label'])[:14]:<14} {r['unexpected']:>6.3f}"
            line += "  UNEXPECTED" if r["flagged"] else ""
        for ranking in compare.values():
            line += f"  {ranking[rank - 1] if rank <= len(ranking) else '':>13}"
        lines.append(line)
    return "\n".join(lines)


def thumbnail_uri(path: str | os.PathLike, size: int = THUMB) -> str:
    """``data:image/png;base64,...`` of ``path`` resized to ``size`` (empty string if unreadable)."""
    try:
        im = open_rgb(path).resize((size, size))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    except (OSError, BadImageError):
        return ""
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def rows_table_html(rows: Sequence[dict], compare: dict[str, list[int]] | None = None,
                    class_level: bool = False) -> str:
    """An HTML ``<table>`` of ``rows`` with a strip of each component's top-activating images."""
    compare = compare or {}
    acts = bool(rows) and "activation" in rows[0]
    cols = ["#", "component", "score"] + (["z"] if acts else []) + (["share"] if class_level else []) + ["label", "alignment", "clarity"]
    cols += (["class word", "unexpected"] if class_level else []) + list(compare) + ["top-activating images"]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
    for rank, r in enumerate(rows, 1):
        cells = [str(rank), str(r["component"]), f"{r['score']:+.4f}"] + ([f"{r['activation']:.3f}"] if acts else [])
        if class_level:
            cells.append(f"{r['share']:.1%}")
        cells += [html.escape(str(r.get("label", "?"))), f"{r.get('alignment', float('nan')):.3f}",
                  f"{r.get('clarity', float('nan')):.3f}"]
        if class_level:
            flag = " <span class='flag'>unexpected</span>" if r["flagged"] else ""
            cells += [html.escape(str(r["expected_label"])), f"{r['unexpected']:.3f}{flag}"]
        cells += [str(ranking[rank - 1]) if rank <= len(ranking) else "" for ranking in compare.values()]
        imgs = [thumbnail_uri(p) for p in list(r.get("images", []))[:STRIP_IMAGES]]
        cells.append("".join(f"<img class='t' src='{u}' title='{html.escape(os.fspath(p))}'>"
                             for u, p in zip(imgs, r.get("images", [])) if u))
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def components_section(title: str, rows: Sequence[dict], legend: str, image: str | os.PathLike | None = None,
                       compare: dict[str, list[int]] | None = None, class_level: bool = False) -> str:
    """An HTML ``<section>``: heading, the explained image (if any), the legend and the table."""
    parts = [f"<section><h2>{html.escape(title)}</h2>"]
    if image is not None:
        uri = thumbnail_uri(image, size=4 * THUMB)
        if uri:
            parts.append(f"<p><img src='{uri}' title='{html.escape(os.fspath(image))}'></p>")
    parts.append(f"<p class='legend'>{html.escape(legend)}</p>")
    parts.append(rows_table_html(rows, compare, class_level))
    parts.append("</section>")
    return "\n".join(parts)


def page(title: str, sections: Sequence[str], intro: str | None = None) -> str:
    """A self-contained HTML page (inline CSS and images, no network) of ``sections``."""
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    intro_html = f"<p>{html.escape(intro)}</p>" if intro else ""
    return "\n".join([head, intro_html, *sections, "</body></html>"])


def insert_sections(document: str, sections: Sequence[str]) -> str:
    """Add ``sections`` (and this module's CSS) to an existing page, e.g. the word-attribution page."""
    document = document.replace("</style>", "\n" + _CSS + "</style>", 1)
    return document.replace("</body>", "\n".join(sections) + "\n</body>", 1)
