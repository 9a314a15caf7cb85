"""Rank the images of a folder by cosine similarity to weighted prompts (cached image features).

Image features come from the on-disk cache (:func:`stori_pl.data.features.image_features`), so a second query
over the same folder encodes no image; several prompts in one call share them.

Example::

    stori retrieve --images photos/ --prompts+ "a (smiling:1.5) person with eyeglasses" --top_k 20 \\
        --out ranking.csv --sheet top.png
"""

from __future__ import annotations

import csv
import io
import sys
import warnings
from pathlib import Path
from typing import Literal

import torch

from stori_pl.data.features import CacheWriteWarning, image_features, list_images
from stori_pl.data.image_io import open_rgb
from stori_pl.retrieval.metrics import rank
from stori_pl.text.clip import load_clip
from stori_pl.text.encoder import WeightedTextEncoder
from stori_pl.text.prompt_weighting import encode_weighted
from stori_pl.text.syntax import parse_weighted_prompt
from stori_pl.utils import atomic_path, atomic_write, write_json


RANKING_SUFFIXES, SHEET_SUFFIXES = (".csv", ".json"), (".png",)


def retrieve(images: Path, prompts: list[str], model: str = "ViT-B-32", pretrained: str | None = "openai",
             start_block: int = 7, method: Literal["stori", "prompt_weighting"] = "stori", top_k: int = 20,
             out: Path | None = None, sheet: Path | None = None, cache_dir: str | None = None, device: str = "cpu",
             batch_size: int = 64) -> int:
    """Rank a folder of images by weighted prompts and print the best matches of each.

    Args:
        images: Folder of images (searched recursively).
        prompts: Weighted prompts, e.g. --prompts+ "a (red:1.5) car" (repeat --prompts+ for several queries).
        model: open_clip model name.
        pretrained: open_clip tag, local checkpoint file, builtin (stori-toy) or null (random weights).
        start_block: First reweighted block (1-indexed).
        method: stori, or prompt_weighting (the paper's App. C.1 baseline).
        top_k: Images listed per prompt (0 = all).
        out: Write the ranking to this .csv or .json file.
        sheet: Write a contact sheet PNG of the top_k images of each prompt.
        cache_dir: Feature cache folder (default: $STORI_CACHE or ~/.cache/stori_pl).
        device: Torch device.
        batch_size: Images per encoder call.

    Returns:
        Exit status 0.

    Raises:
        ValueError: A prompt syntax error, an unknown model, a bad output file name, or a folder without images.
        NotADirectoryError: ``images`` is not a folder.
    """
    for path, kinds in ((out, RANKING_SUFFIXES), (sheet, SHEET_SUFFIXES)):
        if path is not None and path.suffix.lower() not in kinds:
            raise ValueError(f"{path}: use a {' or '.join(kinds)} file name")
    for prompt in prompts:
        parse_weighted_prompt(prompt)
    if not images.is_dir():
        raise NotADirectoryError(f"image folder not found: {images}")
    paths = list_images(images)
    if not paths:
        raise ValueError(f"no images (jpg, png, bmp, gif, webp, tif) found under {images}")
    feats, paths = folder_features(paths, model, pretrained, cache_dir, batch_size, device)
    text_emb = encode_prompts(prompts, model, pretrained, start_block, method, device)  # [P, D]
    rankings = rank_images(feats, text_emb, top_k)
    for prompt, rk in zip(prompts, rankings):
        print(f"\n{prompt}")
        for r, (i, s) in enumerate(rk):
            print(f"{r + 1:4d}  {s:+.4f}  {paths[i]}")
    if out is not None:
        write_ranking(out, prompts, rankings, paths)
        print(f"\nranking written to {out}")
    if sheet is not None:
        contact_sheet(sheet, prompts, rankings, paths)
        print(f"contact sheet written to {sheet}")
    return 0


def folder_features(paths: list[Path], model: str, pretrained: str | None, cache_dir: str | None, batch_size: int,
                    device: str) -> tuple[torch.Tensor, list[Path]]:
    """Cached image features ``[N, D]`` of the readable images and their paths; lists skipped files on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")  # we list skipped files ourselves, on cache hits too
        warnings.simplefilter("always", CacheWriteWarning)
        feats, kept = image_features(paths, model, pretrained, cache_dir=cache_dir, batch_size=batch_size,
                                     device=device, skip_bad_images=True)
    for w in [w for w in caught if issubclass(w.category, CacheWriteWarning)][:1]:  # an unwritable cache: rank anyway
        warnings.warn(w.message, CacheWriteWarning, stacklevel=2)
    skipped = sorted(set(range(len(paths))) - set(kept))
    if skipped:
        listing = "\n  ".join(str(paths[i]) for i in skipped)
        print(f"warning: skipped {len(skipped)} unreadable image(s):\n  {listing}", file=sys.stderr)
    return feats, [paths[i] for i in kept]


def encode_prompts(prompts: list[str], model: str, pretrained: str | None, start_block: int, method: str,
                   device: str) -> torch.Tensor:
    """Normalized embeddings ``[P, D]`` of weighted prompts (on CPU)."""
    clip, _, tokenizer = load_clip(model, pretrained, device=device)
    enc = WeightedTextEncoder(clip, start_block=start_block)
    return encode_weighted(enc, prompts, tokenizer, method=method).cpu()


def rank_images(features: torch.Tensor, text_emb: torch.Tensor, top_k: int) -> list[list[tuple[int, float]]]:
    """Per prompt, ``(image index, cosine)`` best first: ``features [N, D]``, ``text_emb [P, D]`` (normalized)."""
    scores = text_emb.float() @ features.float().T  # [P, N]
    k = scores.shape[1] if top_k <= 0 else min(top_k, scores.shape[1])
    return [[(int(i), float(row[i])) for i in rank(row)[:k]] for row in scores]


def write_ranking(path: Path, prompts: list[str], rankings, paths: list[Path]) -> None:
    """Write rankings atomically as CSV (prompt, rank, path, score) or JSON (prompt → list)."""
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
            im = open_rgb(paths[i])
            im.thumbnail((thumb - 4, thumb - 4))
            sheet.paste(im, (x0 + 2 + (thumb - 4 - im.width) // 2, y0 + 2 + (thumb - 4 - im.height) // 2))
            draw.text((x0 + 3, y0 + thumb), f"#{r + 1} {s:.3f}", fill="black")
        y += n_rows * cell_h
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
