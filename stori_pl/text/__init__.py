"""The text side: loading CLIP (:mod:`.clip`), SToRI's reweighted text encoder (:mod:`.encoder`, pure torch),
the ``(phrase:w)`` prompt syntax (:mod:`.syntax`) and the prompt-weighting baseline (:mod:`.prompt_weighting`)."""

from stori_pl.text.clip import load_clip, tokenize
from stori_pl.text.encoder import PreparedPrompts, WeightedTextEncoder
from stori_pl.text.syntax import (
    escape_prompt,
    parse_weighted_prompt,
    token_words,
    tokenize_weighted,
)

__all__ = [
    "load_clip", "tokenize", "WeightedTextEncoder", "PreparedPrompts", "parse_weighted_prompt", "tokenize_weighted",
    "token_words", "escape_prompt",
]
