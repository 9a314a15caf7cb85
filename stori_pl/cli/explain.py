"""``stori explain CKPT``: read a trained SToRI classifier — word weights per class, and why one image
got its label (word attributions).

Examples:
    stori explain runs/stori/version_0/checkpoints/last.ckpt --class "banded" --class "striped"
    stori explain last.ckpt --html weights.html --top 20
    stori explain last.ckpt --image photo.jpg --png attribution.png
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

DEFAULT_SHOWN = 10  # classes printed without --class / --all


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stori explain",
        description="Show a trained SToRI checkpoint's word weights (and, with --image, word attributions).",
    )
    p.add_argument("ckpt", help="checkpoint of a StoriClassifier (e.g. runs/stori/version_0/checkpoints/last.ckpt)")
    p.add_argument("--class", dest="classes", action="append", metavar="NAME", default=[],
                   help="class to show (repeatable); default: all classes if at most "
                        f"{DEFAULT_SHOWN}, else the {DEFAULT_SHOWN} whose weights moved most")
    p.add_argument("--all", action="store_true", help="show every class")
    p.add_argument("--top", type=int, default=10, help="words in the 'most emphasized' summaries (default 10)")
    p.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML page of all classes")
    p.add_argument("--png", metavar="OUT.png", help="save the shown classes' figures (attribution with --image)")
    p.add_argument("--image", metavar="PHOTO", help="classify this image and attribute its top class to words")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="ANSI colors (auto: only on a terminal and without NO_COLOR)")
    p.add_argument("--pretrained", default=None,
                   help="override the checkpoint's CLIP weights (open_clip tag or local file), e.g. offline")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 1:
        return _error("--top must be >= 1")
    try:
        model = load_stori_checkpoint(args.ckpt, pretrained=args.pretrained)
    except (FileNotFoundError, ValueError) as err:
        return _error(str(err))

    from stori_pl.interpret import viz

    color = viz.use_color() if args.color == "auto" else args.color == "always"
    weights = model.word_weights()
    try:
        shown = _select(weights, args.classes, args.all)
    except ValueError as err:
        return _error(str(err))
    hp = model.hparams
    n_prompts = sum(len(p) for p in weights.values())
    print(f"{args.ckpt}: {type(model).__name__} on CLIP {hp.clip_model} ({hp.pretrained}), "
          f"{len(weights)} classes, {n_prompts} reweighted prompts")
    if args.image:
        return _explain_image(model, args, shown if args.classes else None, color)

    print("Darker = higher weight (mid red = the prompt's average)" if color
          else "(xR) = R times the prompt's average weight (shown where R >= 1.5)")
    for name in shown:
        print()
        print(viz.render_terminal(name, weights[name], color=color))
        up, down = viz.top_words({name: weights[name]}, min(args.top, 5))
        print("  emphasized: " + _fmt(up) + "  |  de-emphasized: " + _fmt(down))
    if len(shown) < len(weights):
        print(f"\n(showing {len(shown)} of {len(weights)} classes; use --class NAME or --all)")
    up, down = viz.top_words(weights, args.top, min_count=2)
    if not up and not down:
        up, down = viz.top_words(weights, args.top)
    print(f"\nMost emphasized words across all classes (weight / prompt average, geometric mean):\n  {_fmt(up)}")
    print(f"Most de-emphasized:\n  {_fmt(down)}")
    if args.html:
        viz.write_html(args.html, weights, title=f"SToRI word weights — {Path(args.ckpt).name}",
                       intro=f"{args.ckpt}: CLIP {hp.clip_model}, {len(weights)} classes")
        print(f"\nwrote {args.html}")
    if args.png:
        figs = [f for name in shown for f in viz.plot_word_weights(name, weights[name])]
        for path in viz.save_pages_png(args.png, figs):
            print(f"wrote {path}")
    return 0


def _explain_image(model, args, classes: list[str] | None, color: bool) -> int:
    from stori_pl.interpret import viz
    from stori_pl.interpret.attribution import (
        attribute,
        attribution_figures,
        image_features,
    )

    try:
        feature = image_features(model, args.image)  # [D]
    except ValueError as err:
        return _error(str(err))
    probs = model.classify_features(feature[None])[0]  # [C]
    top = probs.topk(min(5, len(probs)))
    print(f"\n{args.image}: predicted classes")
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {p:7.2%}  {model.classnames[i]}")
    targets = classes or [model.classnames[top.indices[0].item()]]
    figs = []
    print("\nWord attributions: d(class logit) / d(word log-weight) at the trained weights "
          "(red/+: weighting the word more raises the class score for this image; blue/-: lowers it)")
    for name in targets:
        result = attribute(model, feature, model.classnames.index(name))
        print()
        print(viz.render_terminal(f"{name}  (logit {result.logit:.2f})", result.prompts, color=color, signed=True))
        pos, neg = result.top_words(args.top)
        print("  towards: " + _fmt(pos, signed=True) + "  |  away: " + _fmt(neg, signed=True))
        if args.png:
            figs += attribution_figures(result, subtitle=f"why {Path(args.image).name} (logit {result.logit:.2f})")
    if args.png:
        for path in viz.save_pages_png(args.png, figs):
            print(f"wrote {path}")
    return 0


def load_stori_checkpoint(path: str, pretrained: str | None = None):
    """Load a :class:`~stori_pl.models.StoriClassifier` checkpoint on CPU, with clear errors otherwise."""
    import torch

    from stori_pl.models import StoriClassifier

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (fit writes runs/<name>/version_N/checkpoints/*.ckpt)")
    try:
        info = torch.load(path, map_location="cpu", weights_only=True).get("stori") or {}
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if info.get("model") != "StoriClassifier":
        raise ValueError(
            f"{path} holds a {info.get('model') or 'non-stori-pl'} model; `stori explain` needs a StoriClassifier "
            "checkpoint (only SToRI has word weights)"
        )
    kwargs = {} if pretrained is None else {"pretrained": pretrained}
    return StoriClassifier.load_from_checkpoint(path, map_location="cpu", **kwargs).eval()


def _select(weights: dict, classes: list[str], show_all: bool) -> list[str]:
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
    from stori_pl.lightning.callbacks import movement

    moved = movement(weights)
    return sorted(names, key=lambda c: -moved[c])[:DEFAULT_SHOWN]


def _fmt(items, signed: bool = False) -> str:
    if signed:
        return ", ".join(f"{w} {a:+.3g}" for w, a in items) or "—"
    return ", ".join(f"{w} ×{s:.2f}" for w, s, _ in items) or "—"


def _error(message: str) -> int:
    print(f"stori explain: error: {message}", file=sys.stderr)
    return 2
