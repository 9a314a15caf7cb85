"""Function words and punctuation: the words of a prompt that carry no visual content by themselves.

Used by the stop-word mask of :class:`~stori_pl.models.StoriClassifier` (``freeze_function_words``: these
words keep weight 1), by the word summaries of :mod:`stori_pl.interpret.viz.words` (excluded or marked) and
by the explanation metrics of :mod:`stori_pl.interpret.metrics` (their weight counts as a "sink").
"""

from __future__ import annotations

import string

# English articles, pronouns, prepositions (including the parts of "in front of"), conjunctions, auxiliaries
# and a few quantifiers/intensifiers: none of them names something an image can show.
FUNCTION_WORDS: frozenset[str] = frozenset(
    """a an the this that these those there here it its it's they them their his her he she we you i
    of in on at to for from by with without into onto over under above below behind between against near
    front across along around through about as like than
    and or but nor so if then also either neither both not no
    is are was were be been being am has have had do does did can could will would may might should must
    very quite rather some any each every all many much more most few other such own same just only
    which who whom whose what where when while usually often typically generally""".split()
)
_PUNCTUATION = set(string.punctuation)


def is_punctuation(word: str) -> bool:
    """True for a word made only of punctuation characters (``.``, ``,``, ``...``, ``'s`` is not)."""
    return bool(word) and all(c in _PUNCTUATION for c in word)


def is_function_word(word: str) -> bool:
    """True for a function word (:data:`FUNCTION_WORDS`, case-insensitive) or punctuation."""
    return word.strip().lower() in FUNCTION_WORDS or is_punctuation(word.strip())
