"""Weighted-prompt encoders: SToRI and the "modified prompt weighting" baseline (SToRI paper, App. C.1).

Stable Diffusion's prompt weighting scales the *final* per-token states, which CLIP retrieval never reads
(it pools only the EOT state). The modified version the paper compares with applies the weighting to an
intermediate layer instead: at the input of block ``k`` every real token's hidden state ``h_i`` becomes

    h_i' = e_i + w_i (h_i - e_i)

where ``e_i`` is the hidden state at the same position and layer for the empty prompt ``""``; blocks
``k..n`` then run unchanged. ``w = 1`` leaves the prompt untouched, ``w = 0`` replaces the token by the
empty prompt's state. SToRI instead reweights the attention from block ``k`` on (:mod:`stori_pl.text.encoder`).

:func:`encode_weighted` runs either method on prompts written in the ``(phrase:w)`` syntax, so experiments
can switch with one string (``method="stori"`` or ``"prompt_weighting"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from stori_pl.text.clip import PromptWarning
from stori_pl.text.encoder import WeightedTextEncoder
from stori_pl.text.syntax import tokenize_weighted

METHODS = ("stori", "prompt_weighting")

__all__ = ["METHODS", "prompt_weighting_encode", "encode_weighted"]


@torch.no_grad()
def prompt_weighting_encode(
    encoder: WeightedTextEncoder, tokens: torch.Tensor, log_weights: torch.Tensor, empty_tokens: torch.Tensor
) -> torch.Tensor:
    """Modified prompt weighting (App. C.1) at the input of ``encoder.start_block``.

    Args:
        encoder: A :class:`~stori_pl.text.encoder.WeightedTextEncoder` (gives the tower and the block index).
        tokens: ``[B, L]`` prompt tokens.
        log_weights: ``[B, L]`` log-weights (as from :func:`~stori_pl.text.syntax.tokenize_weighted`).
        empty_tokens: ``[1, L]`` tokens of the empty prompt ``""``.

    Returns:
        ``[B, D]`` unnormalized embeddings (equal to ``encode_text`` when all weights are 1).
    """
    device = encoder.tower.positional_embedding.device
    tokens, empty_tokens = tokens.to(device), empty_tokens[:, : tokens.shape[1]].to(device)
    h = encoder.prefix(tokens)  # [B, L, W]
    e = encoder.prefix(empty_tokens)  # [1, L, W]
    w = torch.where(encoder.token_mask(tokens), log_weights.to(device).float().exp(), 1.0)  # [B, L]
    h = e + w[..., None].to(h.dtype) * (h - e)  # [B, L, W]
    return encoder.suffix(h, tokens, None)  # [B, D]


def encode_weighted(
    encoder: WeightedTextEncoder,
    texts: Sequence[str],
    tokenizer=None,
    method: str = "stori",
    normalize: bool = True,
) -> torch.Tensor:
    """Encode ``(phrase:w)`` prompts with SToRI or the modified prompt weighting baseline.

    Args:
        encoder: The weighted text encoder of a loaded CLIP.
        texts: Prompts in the weight syntax.
        tokenizer: open_clip tokenizer (default: open_clip's default BPE tokenizer).
        method: ``"stori"`` (attention reweighting) or ``"prompt_weighting"`` (App. C.1).
        normalize: L2-normalize the result.

    Returns:
        ``[B, D]`` embeddings.
    """
    if method not in METHODS:
        raise ValueError(f"unknown weighting method {method!r}; choose one of {list(METHODS)}")
    tokens, log_w = tokenize_weighted(list(texts), tokenizer)  # [B, L], [B, L]
    with torch.no_grad():
        if method == "stori":
            emb = encoder(tokens, log_w)
        else:
            with warnings.catch_warnings():  # the empty prompt is the baseline's reference, not a user mistake
                warnings.simplefilter("ignore", PromptWarning)
                empty, _ = tokenize_weighted([""], tokenizer, context_length=tokens.shape[1])  # [1, L]
            emb = prompt_weighting_encode(encoder, tokens, log_w, empty)
    emb = emb.float()
    return nn.functional.normalize(emb, dim=-1) if normalize else emb
