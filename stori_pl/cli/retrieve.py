"""``stori retrieve``: rank the images of a folder by cosine similarity to weighted prompts.

Image features come from the on-disk cache (:func:`stori_pl.data.features.image_features`), so a second query
over the same folder encodes no image; several ``--prompt`` in one call share them.

Example::

    stori retrieve --images photos/ --prompt "a (smiling:1.5) person with eyeglasses" --top-k 20 \\
        --out ranking.csv --sheet top.png
"""

from __future__ import annotations

import csv
import io
import sys
import warnings
from pathlib import Path

import torch
from jsonargparse import ArgumentParser


def build_parser() -> ArgumentParser:
    """Command-line options of ``stori retrieve``."""
    p = ArgumentParser(prog="stori retrieve", description="Rank a folder of images by a weighted prompt.")
    p.add_argument("--images", type=Path, required=True, help="Folder of images (searched recursively).")
    p.add_argument("--prompt", type=str, action="append", required=True,
                   help='Weighted prompt, e.g. "a (red:1.5) car"; repeat for several queries.')
    p.add_argument("--model", type=str, default="ViT-B-32", help="open_clip model name.")
    p.add_argument("--pretrained", type=str | None, default="openai", help="open_clip tag, local file, or null.")
    p.add_argument("--start-block", type=int, default=7, help="First reweighted block (1-indexed).")
    p.add_argument("--method", type=str, default="stori", help="stori | prompt_weighting (paper App. C.1).")
    p.add_argument("--top-k", type=int, default=20, help="Images listed per prompt (0 = all).")
    p.add_argument("--out", type=Path | None, default=None, help="Write the ranking: .csv or .json.")
    p.add_argument("--sheet", type=Path | None, default=None, help="Write a contact sheet PNG of the top-k.")
    p.add_argument("--cache-dir", type=str | None, default=None, help="Feature cache (default $STORI_CACHE).")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    return p


def rank_images(features: torch.Tensor, text_emb: torch.Tensor, top_k: int) -> list[list[tuple[int, float]]]:
    """Per prompt, ``(image index, cosine)`` best first: ``features [N, D]``, ``text_emb [P, D]`` (normalized)."""
    from stori_pl.retrieval.metrics import rank

    scores = text_emb.float() @ features.float().T  # [P, N]
    k = scores.shape[1] if top_k <= 0 else min(top_k, scores.shape[1])
    return [[(int(i), float(row[i])) for i in rank(row)[:k]] for row in scores]


def write_ranking(path: Path, prompts: list[str], rankings, paths: list[Path]) -> None:
    """Write rankings atomically as CSV (prompt, rank, path, score) or JSON (prompt → list)."""
    from stori_pl.utils import atomic_write, write_json

    if path.suffix == ".json":
        write_json(path, {p: [{"rank": r + 1, "path": str(paths[i]), "score": s} for r, (i, s) in enumerate(rk)]
                          for p, rk in zip(prompts, rankings)})
        return
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["prompt", "rank", "path", "score"])
    for p, rk in zip(prompts, rankings):
        w.writerows([p, r + 1, str(paths[i]), f"{s:.6f}"] for r, (i, s) in enumerate(rk))
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


def contact_sheet(path: Path, prompts: list[str], rankings, paths: list[Path], thumb: int = 112, cols: int = 10) -> None:
    """One block of thumbnails (rank and score under each) per prompt; PNG written atomically."""
    from PIL import Image, ImageDraw

    from stori_pl.utils import atomic_path

    cell_h, title_h = thumb + 16, 18
    blocks = [(p, rk, max(1, -(-len(rk) // cols))) for p, rk in zip(prompts, rankings)]
    width = thumb * min(cols, max(len(rk) for _, rk, _ in blocks) or 1)
    height = sum(title_h + n * cell_h for *_, n in blocks)
    sheet = Image.new("RGB", (max(width, 320), height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for prompt, rk, n_rows in blocks:
        draw.text((4, y + 3), prompt[:120], fill="black")
        y += title_h
        for r, (i, s) in enumerate(rk):
            x0, y0 = (r % cols) * thumb, y + (r // cols) * cell_h
            with Image.open(paths[i]) as im:
                im = im.convert("RGB")
                im.thumbnail((thumb - 4, thumb - 4))
                sheet.paste(im, (x0 + 2 + (thumb - 4 - im.width) // 2, y0 + 2 + (thumb - 4 - im.height) // 2))
            draw.text((x0 + 3, y0 + thumb), f"#{r + 1} {s:.3f}", fill="black")
        y += n_rows * cell_h
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def main(argv: list[str]) -> int:
    """Run ``stori retrieve``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from stori_pl.data.features import image_features, list_images
    from stori_pl.text.clip import load_clip
    from stori_pl.text.encoder import WeightedTextEncoder
    from stori_pl.text.prompt_weighting import encode_weighted
    from stori_pl.text.syntax import PromptSyntaxError, parse_weighted_prompt

    def fail(msg: str) -> int:
        print(f"stori retrieve: error: {msg}", file=sys.stderr)
        return 2

    for out, kinds in ((args.out, (".csv", ".json")), (args.sheet, (".png",))):
        if out is not None and out.suffix.lower() not in kinds:
            return fail(f"{out}: use a {' or '.join(kinds)} file name")
    try:
        for prompt in args.prompt:
            parse_weighted_prompt(prompt)
        if not args.images.is_dir():
            return fail(f"image folder not found: {args.images}")
        paths = list_images(args.images)
        if not paths:
            return fail(f"no images (jpg, png, bmp, gif, webp, tif) found under {args.images}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # we list skipped files ourselves, on cache hits too
            feats, kept = image_features(paths, args.model, args.pretrained, cache_dir=args.cache_dir,
                                         batch_size=args.batch_size, device=args.device, skip_bad_images=True)
        skipped = sorted(set(range(len(paths))) - set(kept))
        if skipped:
            listing = "\n  ".join(str(paths[i]) for i in skipped)
            print(f"warning: skipped {len(skipped)} unreadable image(s):\n  {listing}", file=sys.stderr)
        paths = [paths[i] for i in kept]
        model, _, tokenizer = load_clip(args.model, args.pretrained, device=args.device)
        enc = WeightedTextEncoder(model, start_block=args.start_block)
        text_emb = encode_weighted(enc, args.prompt, tokenizer, method=args.method).cpu()  # [P, D]
    except (PromptSyntaxError, ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        return fail(str(e))
    rankings = rank_images(feats, text_emb, args.top_k)
    for prompt, rk in zip(args.prompt, rankings):
        print(f"\n{prompt}")
        for r, (i, s) in enumerate(rk):
            print(f"{r + 1:4d}  {s:+.4f}  {paths[i]}")
    if args.out is not None:
        write_ranking(args.out, args.prompt, rankings, paths)
        print(f"\nranking written to {args.out}")
    if args.sheet is not None:
        contact_sheet(args.sheet, args.prompt, rankings, paths)
        print(f"contact sheet written to {args.sheet}")
    return 0
