"""Learnable visual prompt tokens in a frozen open_clip ViT image encoder (pure torch, no Lightning).

IntCoOp adds learnable tokens to the image encoder; how many layers they enter is not fixed by its text. We
follow VPT (Jia et al., ECCV 2022): ``N`` tokens are appended after the patch tokens (after ``ln_pre``, so the
class token stays at position 0 and its pooling is unchanged) before block 1 (``depth = 1``, VPT-shallow: they
are carried through the later blocks like any token); with ``depth = k > 1`` (VPT-deep, as MaPLe does for its
first layers) fresh learnable tokens replace them before each of blocks 2..k. The prompt tokens are dropped
before pooling, so ``avg``-pooled towers are unchanged too.
"""

from __future__ import annotations

import torch
from torch import nn


class VisualPrompts(nn.Module):
    """``depth × N`` learnable tokens of the vision width, and the prompted ``encode_image``.

    Args:
        width: The vision transformer's width.
        n_tokens: Prompt tokens ``N`` (>= 1).
        depth: Blocks that get fresh tokens (1 = shallow VPT).
    """

    def __init__(self, width: int, n_tokens: int, depth: int = 1):
        super().__init__()
        if n_tokens < 1 or depth < 1:
            raise ValueError(f"visual prompts need n_tokens >= 1 and depth >= 1, got {n_tokens} and {depth}")
        self.tokens = nn.Parameter(torch.randn(depth, n_tokens, width) * 0.02)  # [depth, N, W_v]

    def encode(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Prompted image embeddings ``[B, 3, H, W] -> [B, D]`` (unnormalized, like ``encode_image``).

        Args:
            visual: An open_clip ``VisionTransformer`` (``clip.visual``), frozen.
            images: Preprocessed images.
        """
        if not hasattr(visual, "_embeds") or not hasattr(visual, "transformer"):
            raise ValueError(f"visual prompts need an open_clip VisionTransformer image tower, not "
                             f"{type(visual).__name__}; use visual_prompts: 0 with this CLIP")
        x = visual._embeds(images.to(self.tokens.device, visual.conv1.weight.dtype))  # [B, 1 + P, W_v]
        n = self.tokens.shape[1]
        blocks = visual.transformer.resblocks
        if len(self.tokens) > len(blocks):
            raise ValueError(f"visual_prompt_depth {len(self.tokens)} exceeds the {len(blocks)} vision blocks")
        batch_first = getattr(visual.transformer, "batch_first", True)
        for i, block in enumerate(blocks):
            if i < len(self.tokens):
                prompt = self.tokens[i].to(x.dtype).unsqueeze(0).expand(len(x), -1, -1)  # [B, N, W_v]
                x = torch.cat([x if i == 0 else x[:, :-n], prompt], dim=1)
            x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        pooled, _ = visual._pool(x[:, :-n])
        return pooled @ visual.proj if visual.proj is not None else pooled
