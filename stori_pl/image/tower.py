"""CLIP's image tower (open_clip ``VisionTransformer``) run block by block, with access to the residual stream.

Pure torch, no monkeypatching: the functions below call the tower's own modules (``conv1``, ``class_embedding``,
``positional_embedding``, ``patch_dropout``, ``ln_pre``, ``transformer.resblocks``, ``ln_post``, ``proj``) in
the order of open_clip 3.3's ``VisionTransformer.forward`` (``_embeds`` -> ``transformer`` -> ``_pool`` ->
``proj``), so ``embed_with_cls_edit(model, x, b, None) == model.encode_image(x)`` (tested on the toy CLIP and
a random ViT-B-32).

Blocks are numbered like the text side (:class:`stori_pl.text.encoder.WeightedTextEncoder`): 1-indexed,
``block = b`` means "the hidden states after vision block ``b``"; a negative ``block`` counts from the end as
the authors' ``layer_idx`` (Dreyer et al., ``maxdreyer/attributing-clip`` models/clip_vit.py): ``-1`` = after
the last block, ``-2`` = after the second to last.

Supported towers: open_clip ``VisionTransformer`` with a class token, no attention pooling, ``pool_type``
``"tok"`` (CLS pooling, every OpenAI / LAION / DataComp ViT) or ``"avg"``; batch-first or not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "vision_tower", "n_vision_blocks", "resolve_block", "embed_images", "run_vision_blocks", "residual_stream",
    "cls_activation", "pool_tokens", "cls_readout", "embed_with_cls_edit", "vision_shape", "resolve_block_of",
]


def vision_tower(model: nn.Module) -> nn.Module:
    """The ``VisionTransformer`` of an open_clip ``CLIP`` (or the tower itself).

    Raises:
        NotImplementedError: towers these functions cannot drive (timm / ModifiedResNet, attention pooling).
    """
    visual = getattr(model, "visual", model)
    name = getattr(model, "stori_model_name", type(model).__name__)
    transformer = getattr(visual, "transformer", None)
    if transformer is None or not hasattr(transformer, "resblocks") or not hasattr(visual, "class_embedding"):
        raise NotImplementedError(
            f"{name}: image tower {type(visual).__name__} is not supported; the image side needs an open_clip "
            "VisionTransformer with a class token (timm and ResNet towers are not supported)")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        raise NotImplementedError(f"{name}: attention-pooled image towers are not supported")
    return visual


def n_vision_blocks(model: nn.Module) -> int:
    """Number of transformer blocks of the image tower (4 for ``stori-toy``, 12 for ViT-B)."""
    return len(vision_tower(model).transformer.resblocks)


def resolve_block(model: nn.Module, block: int) -> int:
    """Turn ``block`` (1-indexed, or negative from the end) into ``1..n``.

    Raises:
        ValueError: ``block`` is 0, not an int, or outside ``-n..n`` (the message names the valid range).
    """
    n = n_vision_blocks(model)
    if isinstance(block, bool) or not isinstance(block, int) or block == 0 or not -n <= block <= n:
        raise ValueError(f"vision block must be an int in 1..{n} (or -{n}..-1 from the end), got {block!r}")
    return block if block > 0 else n + block + 1


def embed_images(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch + class + position embeddings and ``ln_pre``: ``[B, 3, H, W] -> [B, T, d]`` (T = 1 + patches)."""
    v = vision_tower(model)
    x = v.conv1(images)  # [B, d, g, g]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, g*g, d]
    cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)  # [B, 1, d]
    x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)  # [B, T, d]
    return v.ln_pre(v.patch_dropout(x))


def run_vision_blocks(model: nn.Module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Vision blocks ``start..stop`` (1-indexed, inclusive; empty when ``stop < start``) on batch-first
    hidden states ``[B, T, d] -> [B, T, d]`` (transposed for towers that are not batch-first)."""
    transformer = vision_tower(model).transformer
    blocks = transformer.resblocks[start - 1:stop]
    if len(blocks) == 0:
        return x
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = block(x, attn_mask=None)
    return x if batch_first else x.transpose(0, 1)


def residual_stream(model: nn.Module, images: torch.Tensor, block: int) -> torch.Tensor:
    """Hidden states of every token after vision block ``block``.

    Args:
        model: open_clip CLIP (frozen, eval mode).
        images: Preprocessed images ``[B, 3, H, W]``.
        block: 1-indexed block, or negative from the end (``-1`` = last).

    Returns:
        ``[B, T, d]``: token 0 is CLS, then the patches in raster order.
    """
    b = resolve_block(model, block)
    return run_vision_blocks(model, embed_images(model, images), 1, b)


def cls_activation(model: nn.Module, images: torch.Tensor, block: int) -> torch.Tensor:
    """The CLS token's residual stream after ``block``: ``[B, 3, H, W] -> [B, d]`` (what the SAE reads)."""
    return residual_stream(model, images, block)[:, 0]


def pool_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's pooling and projection of the final hidden states: ``[B, T, d] -> [B, D]`` (unnormalized)."""
    v = vision_tower(model)
    pool_type = getattr(v, "pool_type", "tok")
    if getattr(v, "final_ln_after_pool", False):
        pooled = v.ln_post(x[:, 0] if pool_type == "tok" else x[:, 1:].mean(dim=1))
    else:
        x = v.ln_post(x)
        pooled = x[:, 0] if pool_type == "tok" else x[:, 1:].mean(dim=1)
    return pooled @ v.proj if v.proj is not None else pooled


def cls_readout(model: nn.Module, cls: torch.Tensor) -> torch.Tensor:
    """``ln_post`` + ``proj`` of CLS residuals (or any vectors in residual space): ``[B, d] -> [B, D]``.

    Exact (equal to the image embedding) only for the CLS residual after the **last** block of a CLS-pooled
    tower; after an earlier block it skips the remaining blocks — the Logit-Lens approximation.
    """
    v = vision_tower(model)
    y = v.ln_post(cls)
    return y @ v.proj if v.proj is not None else y


def embed_with_cls_edit(model: nn.Module, images: torch.Tensor, block: int,
                        edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Image embeddings with the CLS residual after ``block`` replaced by ``edit(cls)``.

    Args:
        model: open_clip CLIP (frozen; gradients flow through the activations).
        images: Preprocessed images ``[B, 3, H, W]``.
        block: 1-indexed block, or negative from the end.
        edit: ``cls [B, d] -> [B, d]`` (e.g. an SAE's attribution forward); None = identity.

    Returns:
        ``[B, D]`` unnormalized, as ``model.encode_image`` (equal to it when ``edit`` is the identity).
    """
    b = resolve_block(model, block)
    x = residual_stream(model, images, b)  # [B, T, d]
    if edit is not None:
        cls = edit(x[:, 0])  # [B, d]
        x = torch.cat([cls[:, None].to(x.dtype), x[:, 1:]], dim=1)
    x = run_vision_blocks(model, x, b + 1, n_vision_blocks(model))
    return pool_tokens(model, x)


def vision_shape(clip_model: str) -> tuple[int, int]:
    """``(width d, number of blocks)`` of a named open_clip architecture's image tower, from its config alone
    (no weights are loaded): ``(128, 4)`` for ``stori-toy``, ``(768, 12)`` for ``ViT-B-16``.

    Raises:
        ValueError: unknown model name, or a tower without ``vision_cfg`` width/layers (timm towers).
    """
    import open_clip

    from stori_pl.text.clip import register_model_configs

    register_model_configs()
    cfg = open_clip.get_model_config(clip_model)
    vision = (cfg or {}).get("vision_cfg") or {}
    if not isinstance(vision.get("layers"), int) or "width" not in vision or vision.get("timm_model_name"):
        raise ValueError(f"unknown CLIP model {clip_model!r} or an image tower without a ViT config")
    return int(vision["width"]), int(vision["layers"])


def resolve_block_of(clip_model: str, block: int) -> int:
    """:func:`resolve_block` for a model name (from its config, no weights loaded)."""
    _, n = vision_shape(clip_model)
    if isinstance(block, bool) or not isinstance(block, int) or block == 0 or not -n <= block <= n:
        raise ValueError(f"vision block of {clip_model} must be an int in 1..{n} (or -{n}..-1 from the end), "
                         f"got {block!r}")
    return block if block > 0 else n + block + 1
