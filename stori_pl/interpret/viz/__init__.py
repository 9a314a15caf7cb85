"""Word-weight views by medium: :mod:`.figures` (matplotlib), :mod:`.terminal` (ANSI text), :mod:`.html`
(searchable page); :mod:`.words` holds what they share (normalization, shading, summaries)."""

from stori_pl.interpret.viz.figures import (
    figure_to_array,
    plot_word_weights,
    save_pages_png,
    save_word_weights_png,
)
from stori_pl.interpret.viz.html import render_html, write_html
from stori_pl.interpret.viz.terminal import render_terminal, use_color
from stori_pl.interpret.viz.words import (
    SPAN,
    ClassPrompts,
    Prompt,
    emphasis,
    markdown_top_words,
    normalize_prompt,
    prompt_text,
    top_words,
    top_words_legend,
    wrap_words,
)

__all__ = [
    "SPAN", "ClassPrompts", "Prompt", "emphasis", "figure_to_array", "markdown_top_words", "normalize_prompt",
    "plot_word_weights", "prompt_text", "render_html", "render_terminal", "save_pages_png",
    "save_word_weights_png", "top_words", "top_words_legend", "use_color", "wrap_words", "write_html",
]
