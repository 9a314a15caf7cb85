"""IntCoOp's trainable parts (pure torch, no Lightning): the attribute extractor, the attention-conditioned
context, the word-embedding targets and the attribute loss.

IntCoOp (Ghosal et al., EMNLP 2024, arXiv 2406.13683). Its text fixes: an attribute extractor from the CLIP
image embedding to the token-embedding space trained with an L2 loss towards the labelled word, and context
vectors conditioned on the image through multi-head attention. Everything else here is our choice, stated
where it is made (also listed in docs/intcoop.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def scaled_features(features: torch.Tensor) -> torch.Tensor:
    """``normalize(f) · sqrt(D)``: ``[B, D] -> [B, D]`` with entries of unit scale, whatever the CLIP's raw norm
    (cached features are unit-norm, the visual-prompt path gives raw ``encode_image`` outputs)."""
    return F.normalize(features.float(), dim=-1) * math.sqrt(features.shape[-1])


class AttributeExtractor(nn.Module):
    """``A``: image embedding ``[B, D]`` -> attribute token embedding ``[B, W]``.

    Choice (the paper says "a small network"): ``Linear(D, H) -> GELU -> Linear(H, W)`` on the scaled image
    embedding (:func:`scaled_features`). The last layer starts at weight 0 and bias = ``init_token`` (the mean
    embedding of the label words), so at step 0 every image gets the same, word-like attribute token instead of
    an out-of-scale vector that would disturb the prompt.

    Args:
        in_dim: Image-embedding width ``D``.
        out_dim: Token-embedding width ``W``.
        hidden: Hidden width ``H`` (None: ``D``).
        init_token: ``[W]`` initial output (None: zeros).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, init_token: torch.Tensor | None = None):
        super().__init__()
        hidden = hidden or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.net[2].weight)
        with torch.no_grad():
            self.net[2].bias.copy_(init_token if init_token is not None else torch.zeros(out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, D] -> [B, W]``."""
        return self.net(scaled_features(features))


class InstanceContext(nn.Module):
    """Context vectors conditioned on the image by multi-head attention: ``ctx(I) = ctx + MHA(ctx, K(I), V(I))``.

    Wiring (the paper's text does not fix it): queries are the ``M`` shared context vectors; keys and values are
    ``kv_tokens`` tokens made from the image embedding by one linear map ``D -> kv_tokens · W`` (each token its
    own slice, so they differ). With a single key the softmax is identically 1 and attention collapses into
    CoCoOp's additive shift; with ``T >= 2`` tokens each context vector and head weighs the image tokens
    differently. The attention's output projection starts at zero, so ``ctx(I) = ctx`` at step 0 (IntCoOp starts
    as CoOp with an attribute token) and the conditioning grows from there.

    Args:
        width: Token-embedding width ``W`` (divisible by ``heads``).
        feature_dim: Image-embedding width ``D``.
        heads: Attention heads.
        kv_tokens: Key/value tokens made from the image embedding (>= 2).
    """

    def __init__(self, width: int, feature_dim: int, heads: int = 4, kv_tokens: int = 4):
        super().__init__()
        if kv_tokens < 2:
            raise ValueError(f"kv_tokens must be >= 2 (got {kv_tokens}): with one key the attention softmax is 1 "
                             "and the conditioning reduces to an additive shift (CoCoOp's meta-net)")
        if width % heads:
            raise ValueError(f"the text width {width} is not divisible by heads={heads}; choose a divisor of {width}")
        self.kv_tokens, self.width = kv_tokens, width
        self.to_kv = nn.Linear(feature_dim, kv_tokens * width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Keys/values of the images: ``[B, D] -> [B, T, W]``."""
        kv = self.to_kv(scaled_features(features))  # [B, T*W]
        return kv.view(len(features), self.kv_tokens, self.width)

    def forward(self, ctx: torch.Tensor, features: torch.Tensor, return_weights: bool = False):
        """``ctx [M, W]``, ``features [B, D]`` -> ``ctx(I) [B, M, W]`` (and the attention ``[B, M, T]``,
        averaged over heads, with ``return_weights``)."""
        kv = self.image_tokens(features)  # [B, T, W]
        q = ctx.to(kv.dtype).unsqueeze(0).expand(len(features), -1, -1)  # [B, M, W]
        out, weights = self.attn(q, kv, kv, need_weights=return_weights)
        return (q + out, weights) if return_weights else q + out


def word_embeddings(words: list[str], token_embedding: nn.Embedding, tokenizer, token_mask=None) -> torch.Tensor:
    """The target embedding of each word ``[V, W]``: its token embedding, or the mean of its BPE tokens'
    embeddings when the tokenizer splits it (our choice for multi-token words; SOS/EOT excluded).

    ``token_mask``: tokens ``[V, L]`` -> bool ``[V, L]`` of the word tokens (default: between SOS and the EOT, the
    largest id, as CLIP's tokenizer writes them; :meth:`WeightedTextEncoder.token_mask` for other tokenizers)."""
    device = token_embedding.weight.device
    tokens = tokenizer(list(words)).to(device)  # [V, 77]
    with torch.no_grad():
        emb = token_embedding(tokens).float()  # [V, 77, W]
    if token_mask is not None:
        mask = token_mask(tokens).float()  # [V, 77]
    else:
        eot = tokens.argmax(dim=-1)  # [V] (the EOT id is the largest)
        pos = torch.arange(tokens.shape[1], device=device)
        mask = ((pos[None] >= 1) & (pos[None] < eot[:, None])).float()  # [V, 77]
    return (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # [V, W]


def attribute_loss(predicted: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, scale: float) -> torch.Tensor:
    """Relative squared L2 between ``A(I)`` and the labelled word: ``mean_b ||A(I_b) - e(w_b)||² / scale``.

    Args:
        predicted: ``[B, W]`` attribute embeddings.
        targets: ``[V, W]`` word embeddings.
        index: ``[B]`` word index per image, -1 = unlabelled (left out).
        scale: Mean squared norm of the targets (makes λ1 comparable across CLIPs; our choice).

    Returns:
        Scalar; 0 (with a graph) when no image is labelled.
    """
    keep = index >= 0
    if not bool(keep.any()):
        return predicted.sum() * 0.0
    diff = predicted[keep] - targets[index[keep]].to(predicted)  # [b, W]
    return diff.pow(2).sum(-1).mean() / scale


def nearest_words(queries: torch.Tensor, table: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-nearest rows of ``table [V, W]`` for ``queries [N, W]``: ``(similarity [N, k], index [N, k])``."""
    sim = F.normalize(queries.float(), dim=-1) @ F.normalize(table.float(), dim=-1).T  # [N, V]
    return sim.topk(min(k, table.shape[0]), dim=-1)
