"""Word-weight rendering: figures (wrap, paginate, shading), terminal, HTML, JSON export, summaries."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from stori_pl.interpret import viz

DOG = [("a", 1.0), ("fluffy", 6.0), ("dog", 2.0), ("with", 0.5), ("floppy", 1.0), ("ears", 1.5), (".", 0.2)]


def _random_prompts(n_prompts: int, n_words: int, seed: int = 0):
    rng = random.Random(seed)
    vocab = "a photo of the dog with fluffy fur , long ears and wagging tail . seen in parks".split()
    return [[(rng.choice(vocab), rng.random()) for _ in range(n_words)] for _ in range(n_prompts)]


def test_normalize_and_emphasis():
    normed = viz.normalize_prompt(DOG)
    assert sum(v for _, v in normed) == pytest.approx(1.0)
    assert [w for w, _ in normed] == [w for w, _ in DOG]
    ratios = viz.emphasis(DOG)
    assert ratios[1] == max(ratios) and sum(ratios) == pytest.approx(len(DOG))
    with pytest.raises(ValueError, match="signed=True"):
        viz.normalize_prompt([("a", -1.0)])


def test_prompt_text_joins_punctuation():
    assert viz.prompt_text(["a", "dog", ",", "running", "."]) == "a dog, running."


def test_wrap_respects_width():
    words = [w for w, _ in _random_prompts(1, 60)[0]]
    lines = viz.wrap_words(words, 50, 4)
    assert len(lines) > 1
    for line in lines:
        assert line[0][0] >= 4 - 1  # hanging indent
        col, i = line[-1]
        assert col + len(words[i]) <= 50
    assert [i for line in lines for _, i in line] == list(range(60))  # every word once, in order


def test_plot_paginates_60_prompts_of_60_tokens():
    prompts = _random_prompts(60, 60)
    figs = viz.plot_word_weights("golden retriever", prompts, subtitle="epoch 3", lines_per_page=60)
    assert 3 <= len(figs) <= 8  # 60 prompts x ~4 lines do not fit one page
    heights = {f.get_size_inches()[1] for f in figs}
    assert max(heights) * figs[0].dpi < 1600  # pages stay readable (bounded height)
    titles = [t.get_text() for t in figs[0].axes[0].texts[:1]]
    assert titles[0].startswith("golden retriever — epoch 3") and f"page 1/{len(figs)}" in titles[0]
    # every prompt appears exactly once over the pages (numbered "k.")
    numbers = [int(m.group(1)) for f in figs for t in f.axes[0].texts if (m := re.match(r"(\d+)\.", t.get_text()))]
    assert numbers == list(range(1, 61))


def _pixels(img: np.ndarray, kind: str) -> int:
    r, g, b = (img[..., i].astype(int) for i in range(3))
    if kind == "red":
        return int(((r - b > 60) & (r - g > 60)).sum())
    return int(((b - r > 60) & (b > 120)).sum())


def test_plot_shades_emphasized_words_red_and_negative_blue():
    img = viz.figure_to_array(viz.plot_word_weights("dog", [DOG])[0])
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert _pixels(img, "red") > 50 and _pixels(img, "blue") == 0
    signed = [[("towards", 0.8), ("away", -0.8), ("neutral", 0.0)]]
    img = viz.figure_to_array(viz.plot_word_weights("dog", signed, signed=True)[0])
    assert _pixels(img, "red") > 50 and _pixels(img, "blue") > 50
    empty = viz.plot_word_weights("nothing", [])
    assert len(empty) == 1


def test_save_png_stacks_pages_and_splits_tall_images(tmp_path):
    from PIL import Image

    prompts = _random_prompts(16, 40)
    pages = viz.plot_word_weights("dog", prompts, lines_per_page=20)
    page_h = [viz.figure_to_array(f).shape[0] for f in pages]
    assert len(pages) >= 3
    (one,) = viz.save_word_weights_png(tmp_path / "dog.png", "dog", prompts, lines_per_page=20)
    assert Image.open(one).height == sum(page_h)  # all pages stacked in one file
    paths = viz.save_word_weights_png(tmp_path / "s.png", "dog", prompts, lines_per_page=20, max_height=max(page_h))
    assert len(paths) == len(pages) and paths[1].endswith("s_p2.png")
    for p in paths:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_terminal_color_and_plain():
    colored = viz.render_terminal("dog", [DOG], color=True, width=80)
    assert "\x1b[" in colored and "fluffy" in colored
    assert "\x1b[30;48;5;196mfluffy" in colored  # the most emphasized word gets the strongest red
    plain = viz.render_terminal("dog", [DOG], color=False, width=80)
    assert "\x1b" not in plain
    assert "fluffy(x3.44)" in plain and "ears(x" not in plain  # only notable words are annotated
    assert "ears." in viz.render_terminal("d", [[("ears", 1.0), (".", 5.0)]], color=False)  # ".(x1.7)" still attaches
    assert plain.splitlines()[0] == "== dog =="
    long = viz.render_terminal("dog", _random_prompts(3, 60), color=False, width=60)
    assert all(len(line) <= 60 for line in long.splitlines())


def test_use_color_off_for_non_tty_and_no_color(monkeypatch):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert viz.use_color(io.StringIO()) is False
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert viz.use_color(Tty()) is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert viz.use_color(Tty()) is False


def test_html_self_contained_and_searchable(tmp_path):
    classes = {"golden retriever": [DOG], "<script>alert(1)</script>": [DOG[:3]]}
    path = tmp_path / "w.html"
    viz.write_html(path, classes, title="My run")
    text = path.read_text(encoding="utf-8")
    assert "data-name='golden retriever'" in text
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text  # escaped
    assert "type='search'" in text and "oninput" in text  # search box
    assert not re.search(r"(src|href)=['\"]?https?:", text)  # no external resources
    assert text.count("<section") == 2 and text.count("<li>") == 2
    level = {w: int(m) for m, w in re.findall(r"class=r(\d+) title='[^']*'>(\w+)<", text)}
    assert level["fluffy"] == max(level.values()) and level["fluffy"] > level["ears"] > level["with"]


def test_top_words_and_markdown():
    up, down = viz.top_words({"dog": [DOG]}, k=2)
    assert up[0][0] == "fluffy" and down[0][0] == "floppy"  # function words and punctuation left out
    assert viz.top_words({"dog": [DOG]}, k=2, function_words=True)[1][0][0] == "."
    table = viz.markdown_top_words({"dog": [DOG], "a|b": [DOG[:2]]}, k=2)
    lines = table.splitlines()
    assert len(lines) == 4 and "fluffy ×" in lines[2] and "a\\|b" in lines[3]
