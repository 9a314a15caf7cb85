"""stori-pl: SToRI (Semantic Token Reweighting) for CLIP text embeddings, on PyTorch Lightning."""

from stori_pl.clip import load_clip
from stori_pl.reweight import PreparedPrompts, WeightedTextEncoder

__version__ = "0.1.0"


def parse_weighted_prompt(text: str):
    """Parse ``(phrase:1.5)`` weight syntax; see :func:`stori_pl.prompts.parse_weighted_prompt`."""
    from stori_pl.prompts import parse_weighted_prompt as _parse

    return _parse(text)


__all__ = ["load_clip", "WeightedTextEncoder", "PreparedPrompts", "parse_weighted_prompt", "__version__"]
