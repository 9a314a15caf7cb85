"""Encode one weighted prompt: print how its words were weighted and save the normalized embedding.

Example::

    stori embed "a photo of a (red:1.5) car" --model ViT-B-32 --pretrained openai --out red_car.npy
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path
from typing import Literal

from stori_pl.text.clip import load_clip
from stori_pl.text.encoder import WeightedTextEncoder
from stori_pl.text.prompt_weighting import encode_weighted
from stori_pl.text.syntax import parse_weighted_prompt, token_words, tokenize_weighted
from stori_pl.utils import atomic_path, atomic_write


OUT_SUFFIXES = (".npy", ".safetensors")


def embed(prompt: str, model: str = "ViT-B-32", pretrained: str | None = "openai", start_block: int = 7,
          method: Literal["stori", "prompt_weighting"] = "stori", device: str = "cpu", out: Path | None = None) -> int:
    """Encode a weighted prompt ((phrase:w) syntax) and print its word / weight / token table.

    Args:
        prompt: Prompt, e.g. "a photo of a (red:1.5) car"; \\( \\) for literal parentheses.
        model: open_clip model name.
        pretrained: open_clip tag, local checkpoint file, builtin (stori-toy) or null (random weights).
        start_block: First reweighted block (1-indexed).
        method: stori, or prompt_weighting (the paper's App. C.1 baseline).
        device: Torch device.
        out: Save the L2-normalized embedding [D] to this .npy or .safetensors file.

    Returns:
        Exit status 0.

    Raises:
        ValueError: A prompt syntax error (with a caret under the column), an unknown model, or a bad --out.
    """
    if out is not None and out.suffix not in OUT_SUFFIXES:
        raise ValueError(f"--out {out}: use a .npy or .safetensors file name")
    parse_weighted_prompt(prompt)  # syntax errors before loading a model
    clip, _, tokenizer = load_clip(model, pretrained, device=device)
    tokens, log_w = tokenize_weighted([prompt], tokenizer)  # [1, L], [1, L]
    enc = WeightedTextEncoder(clip, start_block=start_block)
    emb = encode_weighted(enc, [prompt], tokenizer, method=method)[0].cpu()  # [D]
    print(format_word_table(word_table(tokens[0], log_w[0], tokenizer)))
    print(f"\nembedding: {emb.numel()} dims, L2-normalized ({model}, start block {start_block}, {method})")
    if out is not None:
        meta = {"prompt": prompt, "model": model, "pretrained": str(pretrained), "start_block": str(start_block),
                "method": method}
        save_embedding(out, emb, meta)
        print(f"saved {out}")
    return 0


def token_pieces(ids: list[int], tokenizer) -> list[str]:
    """Readable text of BPE tokens: each piece's bytes decoded as UTF-8 (``'ðŁĺĢ'`` → ``'😀'``).

    A character split over several tokens (an emoji, a CJK character) is shown once, followed by
    ``[n tokens]``.

    Args:
        ids: Token ids of one word, in order.
        tokenizer: open_clip ``SimpleTokenizer`` (its ``decoder`` and ``byte_decoder``), or a SentencePiece-style
            one (SigLIP's: its pieces as the tokenizer writes them).
    """
    if not hasattr(tokenizer, "byte_encoder"):
        from stori_pl.text.syntax import piece_texts

        return piece_texts(ids, tokenizer)
    byte_decoder = getattr(tokenizer, "byte_decoder", None) or {v: k for k, v in tokenizer.byte_encoder.items()}
    pieces, buf, count = [], b"", 0
    for i in ids:
        buf += bytes(byte_decoder[c] for c in tokenizer.decoder[int(i)].replace("</w>", ""))
        count += 1
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError:
            continue  # the rest of this character is in the next token
        pieces.append(text if count == 1 else f"{text}[{count} tokens]")
        buf, count = b"", 0
    if buf:  # cut by truncation
        pieces.append(buf.decode("utf-8", errors="replace") + (f"[{count} tokens]" if count > 1 else ""))
    return pieces


def word_table(tokens_row, log_weights_row, tokenizer) -> list[tuple[str, str, str]]:
    """Rows ``(word, weight, tokens)`` for the real tokens of one tokenized prompt (sub-words merged).

    Args:
        tokens_row: Token ids ``[L]``.
        log_weights_row: Log-weights ``[L]`` of those tokens.
        tokenizer: open_clip ``SimpleTokenizer``.
    """
    rows = []
    for word, pos in token_words(tokens_row, tokenizer):
        ws = sorted({round(math.exp(float(log_weights_row[p])), 4) for p in pos})
        pieces = " ".join(token_pieces([int(tokens_row[p]) for p in pos], tokenizer))
        rows.append((word, "/".join(f"{w:g}" for w in ws), pieces))
    return rows


def display_width(text: str) -> int:
    """Terminal columns of ``text`` (wide East Asian characters and emoji take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 0 if unicodedata.combining(c) else 1 for c in text)


def format_word_table(rows: list[tuple[str, str, str]]) -> str:
    """Plain-text table of :func:`word_table` rows, aligned in a terminal."""
    head = ("word", "weight", "tokens")
    width = [max(display_width(r[i]) for r in [head, *rows]) for i in range(3)]

    def line(r):
        return "  ".join(c + " " * (w - display_width(c)) for c, w in zip(r, width)).rstrip()

    return "\n".join([line(head), line(tuple("-" * w for w in width)), *map(line, rows)])


def save_embedding(path: Path, embedding, metadata: dict[str, str]) -> None:
    """Write ``embedding`` [D] atomically as ``.npy`` (no pickle) or ``.safetensors`` (key ``embedding``)."""
    import numpy as np


    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({"embedding": embedding.contiguous()}, str(tmp), metadata=metadata)
    elif path.suffix == ".npy":
        with atomic_write(path, "wb") as f:
            np.save(f, embedding.numpy(), allow_pickle=False)
    else:
        raise ValueError(f"--out {path}: use a .npy or .safetensors file name")
