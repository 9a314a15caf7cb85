"""stori-pl: SToRI (Semantic Token Reweighting) for CLIP text embeddings, on PyTorch Lightning.

The public API: :func:`load_clip`, :class:`WeightedTextEncoder`, :class:`PreparedPrompts`,
:func:`parse_weighted_prompt` and the classifiers :class:`StoriClassifier`, :class:`ZeroShotCLIP`,
:class:`TaskRes`. They are imported on first use, so that ``import stori_pl`` (and ``stori --help``) does not
load torch, open_clip or Lightning.
"""

__version__ = "0.2.0"

_LAZY = {
    "load_clip": "stori_pl.text.clip",
    "WeightedTextEncoder": "stori_pl.text.encoder",
    "PreparedPrompts": "stori_pl.text.encoder",
    "parse_weighted_prompt": "stori_pl.text.syntax",
    "StoriClassifier": "stori_pl.models",
    "ZeroShotCLIP": "stori_pl.models",
    "TaskRes": "stori_pl.models",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'stori_pl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [*_LAZY, "__version__"]
