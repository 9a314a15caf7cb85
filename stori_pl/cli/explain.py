"""Show a trained SToRI classifier's word weights per class, and why one image got its label (attributions).

Examples::

    stori explain runs/stori/version_0/checkpoints/last.ckpt --classes+ banded --classes+ striped
    stori explain last.ckpt --html weights.html --top 20
    stori explain last.ckpt --image photo.jpg --png attribution.png
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

from stori_pl.cli.components import explain_with_components
from stori_pl.interpret import prompt_words, viz
from stori_pl.interpret.attribution import as_image_feature, attribute, attribution_figures
from stori_pl.lightning.callbacks import movement
from stori_pl.models import CoOp, StoriClassifier, load_checkpoint


DEFAULT_SHOWN = 10  # classes printed without --classes / --all_classes


def explain(ckpt: str, classes: list[str] | None = None, all_classes: bool = False, top: int = 10,
            html: Path | None = None, png: Path | None = None, image: Path | None = None,
            color: Literal["auto", "always", "never"] = "auto", pretrained: str | None = None,
            absolute: bool = False, target: Literal["log_prob", "logit"] = "log_prob", sae: str | None = None) -> int:
    """Print a StoriClassifier checkpoint's word weights (and, with --image, word attributions); for a CoOp or
    IntCoOp checkpoint, the nearest words of its context vectors (and, with --image, IntCoOp's predicted attribute
    and the image's prompt as text).

    Args:
        ckpt: Checkpoint of a StoriClassifier, CoOp or IntCoOp (e.g. runs/stori/version_0/checkpoints/last.ckpt).
        classes: Classes to show, e.g. --classes+ banded --classes+ striped (default: all classes if at most
            10, else the 10 whose weights moved most).
        all_classes: Show every class.
        top: Words in the 'most emphasized' summaries.
        html: Write a self-contained HTML page of all classes to this file (with --image too; with --image and
            --sae the page of the image's words and components).
        png: Save the shown classes' figures (the attribution figures with --image) to this PNG.
        image: Classify this image and attribute its top class (or --classes) to words.
        color: ANSI colors: auto (only on a terminal and without NO_COLOR), always or never.
        pretrained: Override the checkpoint's CLIP weights (open_clip tag or local file), e.g. offline.
        absolute: Show absolute weights (1 = unchanged by training) instead of weights relative to the prompt's
            average, to tell "this word went up" from "the other words went down".
        target: With --image: attribute the class's log-probability (why this class and not the others) or its
            raw logit.
        sae: With --image: also list the image's top SAE components of CLIP's image tower from this sparse-
            autoencoder checkpoint (as stori components; --html then writes words and components on one page).

    Returns:
        Exit status 0.

    Raises:
        FileNotFoundError: No such checkpoint.
        ValueError: Not a StoriClassifier checkpoint, an unknown class, an unreadable image, or top < 1.
    """
    if top < 1:
        raise ValueError(f"--top must be >= 1 (got {top})")
    model = load_checkpoint(ckpt, expect=(StoriClassifier, CoOp), **({} if pretrained is None else {"pretrained": pretrained}))
    if isinstance(model, CoOp):  # CoOp / IntCoOp: the words of the learned prompt
        if html is not None:
            raise ValueError(f"--html {html}: the HTML page draws a SToRI checkpoint's word weights; a CoOp / "
                             "IntCoOp checkpoint has none (its prompt words are printed); drop --html")
        return explain_learned_prompt(model, ckpt, image, classes, top, sae, target)
    use_color = viz_use_color(color)
    shown = select_classes(model.word_weights(), classes or [], all_classes)  # by normalized movement
    weights = model.word_weights(absolute=absolute)
    hp = model.hparams
    n_prompts = sum(len(p) for p in weights.values())
    print(f"{ckpt}: {type(model).__name__} on CLIP {hp.clip_model} ({hp.pretrained}), "
          f"{len(weights)} classes, {n_prompts} reweighted prompts")
    if image is not None:
        status = explain_image(model, image, shown if classes else None, top, png, use_color, target)
        if sae is not None:
            explain_with_components(model, sae, image, shown if classes else None, top, html, target)
        elif html is not None:  # without --sae the page is the word weights' (it used to be skipped silently)
            write_weight_pages(ckpt, hp.clip_model, weights, shown, html, None, absolute)
        return status
    print_weights(weights, shown, top, use_color, absolute)
    write_weight_pages(ckpt, hp.clip_model, weights, shown, html, png, absolute)
    return 0


def viz_use_color(color: str) -> bool:
    """``--color auto|always|never`` as a bool (auto: only on a terminal and without NO_COLOR)."""
    return viz.use_color() if color == "auto" else color == "always"


def explain_learned_prompt(model, ckpt: str, image: Path | None, classes: list[str] | None, top: int,
                           sae: str | None, target: str) -> int:
    """``stori explain`` on a CoOp / IntCoOp checkpoint: the prompt's words, and with ``image`` and ``sae`` the
    image's top SAE components too (for ``classes``, default the predicted class).

    Returns:
        Exit status 0.
    """
    print(prompt_words.explain_prompt_model(model, ckpt, image, top))
    if image is not None and sae is not None:
        explain_with_components(model, sae, image, classes or None, top, None, target)
    return 0


def write_weight_pages(ckpt: str, clip_model: str, weights: dict, shown: list[str], html: Path | None,
                       png: Path | None, absolute: bool) -> None:
    """``--html``: one page of all classes' word weights; ``--png``: the shown classes' figures."""
    if html is not None:
        viz.write_html(html, weights, title=f"SToRI word weights — {Path(ckpt).name}", absolute=absolute,
                       intro=f"{ckpt}: CLIP {clip_model}, {len(weights)} classes")
        print(f"\nwrote {html}")
    if png is not None:
        figs = [f for name in shown for f in viz.plot_word_weights(name, weights[name], absolute=absolute)]
        for path in viz.save_pages_png(png, figs):
            print(f"wrote {path}")


def print_weights(weights: dict, shown: list[str], top: int, color: bool, absolute: bool = False) -> None:
    """Terminal view of the ``shown`` classes' word weights and the most (de-)emphasized words overall
    (function words and punctuation are left out of the summaries)."""
    if absolute:
        print("Darker = higher weight (mid red = 1, unchanged by training)" if color
              else "(xR) = weight R, 1 = unchanged by training (shown where R >= 1.5 or R <= 1/1.5)")
    else:
        print("Darker = higher weight (mid red = the prompt's average)" if color
              else "(xR) = R times the prompt's average weight (shown where R >= 1.5)")
    scale = "absolute weight" if absolute else "weight / prompt average"
    print(f"emphasized: per class, {scale}, geometric mean over the class's prompts (x1 where a word is absent)")
    for name in shown:
        print()
        print(viz.render_terminal(name, weights[name], color=color, absolute=absolute))
        up, down = viz.top_words({name: weights[name]}, min(top, 5), absolute=absolute, over="prompts")
        print("  emphasized: " + fmt_words(up) + "  |  de-emphasized: " + fmt_words(down))
    if len(shown) < len(weights):
        print(f"\n(showing {len(shown)} of {len(weights)} classes; use --classes+ NAME or --all_classes true)")
    up, down = viz.top_words(weights, top, min_count=2, absolute=absolute)
    if not up and not down:
        up, down = viz.top_words(weights, top, absolute=absolute)
    print(f"\nMost emphasized words across all classes ({scale}, geometric mean; function words left out):\n"
          f"  {fmt_words(up)}")
    print(f"Most de-emphasized:\n  {fmt_words(down)}")


def explain_image(model, image: Path, classes: list[str] | None, top: int, png: Path | None, color: bool,
                  target: str = "log_prob") -> int:
    """Top-5 classes of ``image`` and the word attributions of ``classes`` (default: the top class)."""
    feature = as_image_feature(model, image)  # [D]
    probs = model.classify_features(feature[None])[0]  # [C]
    best = probs.topk(min(5, len(probs)))
    print(f"\n{image}: predicted classes")
    for p, i in zip(best.values.tolist(), best.indices.tolist()):
        print(f"  {p:7.2%}  {model.classnames[i]}")
    targets = classes or [model.classnames[best.indices[0].item()]]
    figs = []
    what = "log p(class)" if target == "log_prob" else "class logit"
    print(f"\nWord attributions: d {what} / d(word log-weight) at the trained weights "
          "(red/+: weighting the word more raises it for this image; blue/-: lowers it)")
    for name in targets:
        result = attribute(model, feature, model.classnames.index(name), target=target)
        label = f"{name}  (log p {result.log_prob:.3f}, logit {result.logit:.2f})"
        print()
        print(viz.render_terminal(label, result.prompts, color=color, signed=True))
        pos, neg = result.top_words(top)
        print("  towards: " + fmt_words(pos, signed=True) + "  |  away: " + fmt_words(neg, signed=True))
        if png is not None:
            figs += attribution_figures(result, subtitle=f"why {Path(image).name} (log p {result.log_prob:.3f})")
    if png is not None:
        for path in viz.save_pages_png(png, figs):
            print(f"wrote {path}")
    return 0

def select_classes(weights: dict, classes: list[str], show_all: bool) -> list[str]:
    """The classes to show: ``classes`` (checked, with close-name hints), all, or the 10 that moved most."""
    names = list(weights)
    if classes:
        missing = [c for c in classes if c not in weights]
        if missing:
            lower = {n.lower(): n for n in names}
            hints = [
                lower.get(c.lower()) or ", ".join(lower[m] for m in difflib.get_close_matches(c.lower(), list(lower), n=3))
                or "?" for c in missing
            ]
            raise ValueError("unknown class " + "; ".join(f"{c!r} (did you mean: {h})" for c, h in zip(missing, hints)))
        return list(dict.fromkeys(classes))
    if show_all or len(names) <= DEFAULT_SHOWN:
        return names

    moved = movement(weights)
    return sorted(names, key=lambda c: -moved[c])[:DEFAULT_SHOWN]


def fmt_words(items, signed: bool = False) -> str:
    """``word ×ratio`` (weights) or ``word +attribution`` (signed) pairs, comma-separated."""
    if signed:
        return ", ".join(f"{w} {a:+.3g}" for w, a in items) or "—"
    return ", ".join(f"{w} ×{s:.2f}" for w, s, _ in items) or "—"
