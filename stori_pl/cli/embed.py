"""``stori embed "PROMPT"``: encode one weighted prompt, show how its words were weighted, save the embedding.

Example::

    stori embed "a photo of a (red:1.5) car" --model ViT-B-32 --pretrained openai --out red_car.npy
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from jsonargparse import ArgumentParser


def build_parser() -> ArgumentParser:
    """Command-line options of ``stori embed``."""
    p = ArgumentParser(prog="stori embed", description="Encode a weighted prompt ((phrase:w) syntax) with SToRI.")
    p.add_argument("prompt", type=str, help='Prompt, e.g. "a photo of a (red:1.5) car"; \\( \\) for literal parentheses.')
    p.add_argument("--model", type=str, default="ViT-B-32", help="open_clip model name.")
    p.add_argument("--pretrained", type=str | None, default="openai", help="open_clip tag, local file, or null (random).")
    p.add_argument("--start-block", type=int, default=7, help="First reweighted block (1-indexed).")
    p.add_argument("--method", type=str, default="stori", help="stori | prompt_weighting (paper App. C.1).")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--out", type=Path | None, default=None, help="Save the L2-normalized embedding: .npy or .safetensors.")
    return p


def word_table(tokens_row, log_weights_row, tokenizer) -> list[tuple[str, str, str]]:
    """Rows ``(word, weight, tokens)`` for the real tokens of one tokenized prompt (sub-words merged)."""
    from stori_pl.text.syntax import token_words

    decoder = tokenizer.decoder
    rows = []
    for word, pos in token_words(tokens_row, tokenizer):
        ws = sorted({round(math.exp(float(log_weights_row[p])), 4) for p in pos})
        pieces = " ".join(decoder[int(tokens_row[p])].replace("</w>", "") for p in pos)
        rows.append((word, "/".join(f"{w:g}" for w in ws), pieces))
    return rows


def format_table(rows: list[tuple[str, str, str]]) -> str:
    """Plain-text table of :func:`word_table` rows."""
    head = ("word", "weight", "tokens")
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(tuple("-" * w for w in width)), *map(line, rows)])


def save_embedding(path: Path, embedding, metadata: dict[str, str]) -> None:
    """Write ``embedding`` [D] atomically as ``.npy`` (no pickle) or ``.safetensors`` (key ``embedding``)."""
    import numpy as np

    from stori_pl.utils import atomic_path, atomic_write

    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({"embedding": embedding.contiguous()}, str(tmp), metadata=metadata)
    elif path.suffix == ".npy":
        with atomic_write(path, "wb") as f:
            np.save(f, embedding.numpy(), allow_pickle=False)
    else:
        raise ValueError(f"--out {path}: use a .npy or .safetensors file name")


def main(argv: list[str]) -> int:
    """Run ``stori embed``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from stori_pl.text.clip import load_clip
    from stori_pl.text.encoder import WeightedTextEncoder
    from stori_pl.text.prompt_weighting import encode_weighted
    from stori_pl.text.syntax import (
        PromptSyntaxError,
        parse_weighted_prompt,
        tokenize_weighted,
    )

    if args.out is not None and args.out.suffix not in (".npy", ".safetensors"):
        print(f"stori embed: error: --out {args.out}: use a .npy or .safetensors file name", file=sys.stderr)
        return 2
    try:
        parse_weighted_prompt(args.prompt)  # syntax errors before loading a model
        model, _, tokenizer = load_clip(args.model, args.pretrained, device=args.device)
        tokens, log_w = tokenize_weighted([args.prompt], tokenizer)  # [1, L], [1, L]
        enc = WeightedTextEncoder(model, start_block=args.start_block)
        emb = encode_weighted(enc, [args.prompt], tokenizer, method=args.method)[0].cpu()  # [D]
    except (PromptSyntaxError, ValueError, TypeError) as e:
        print(f"stori embed: error: {e}", file=sys.stderr)
        return 2
    print(format_table(word_table(tokens[0], log_w[0], tokenizer)))
    print(f"\nembedding: {emb.numel()} dims, L2-normalized ({args.model}, start block {args.start_block}, {args.method})")
    if args.out is not None:
        meta = {"prompt": args.prompt, "model": args.model, "pretrained": str(args.pretrained),
                "start_block": str(args.start_block), "method": args.method}
        save_embedding(args.out, emb, meta)
        print(f"saved {args.out}")
    return 0
