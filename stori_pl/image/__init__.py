"""The image side: CLIP's vision tower run block by block (:mod:`.tower`, pure torch), like :mod:`stori_pl.text`
for the text side. Used by the sparse-autoencoder components (:mod:`stori_pl.image.sae`)."""

from stori_pl.image.tower import (
    cls_activation,
    cls_readout,
    embed_with_cls_edit,
    n_vision_blocks,
    residual_stream,
    resolve_block,
    resolve_block_of,
    vision_shape,
)

__all__ = [
    "cls_activation", "cls_readout", "embed_with_cls_edit", "n_vision_blocks", "resolve_block", "residual_stream",
    "resolve_block_of", "vision_shape",
]
