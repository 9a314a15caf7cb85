"""stori-pl: SToRI (Semantic Token Reweighting) for CLIP text embeddings, on PyTorch Lightning.

The public API: :func:`load_clip`, :class:`WeightedTextEncoder`, :class:`PreparedPrompts`,
:func:`parse_weighted_prompt`, and (imported on first use, since they pull in Lightning)
:class:`StoriClassifier`, :class:`ZeroShotCLIP`, :class:`TaskRes`.
"""

from stori_pl import _moved
from stori_pl.text.clip import load_clip
from stori_pl.text.encoder import PreparedPrompts, WeightedTextEncoder
from stori_pl.text.syntax import parse_weighted_prompt

__version__ = "0.2.0"

_moved.install()

_LAZY = {"StoriClassifier": "stori_pl.models", "ZeroShotCLIP": "stori_pl.models", "TaskRes": "stori_pl.models"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stori_pl' has no attribute {name!r}")


__all__ = ["load_clip", "WeightedTextEncoder", "PreparedPrompts", "parse_weighted_prompt", "StoriClassifier",
           "ZeroShotCLIP", "TaskRes", "__version__"]
