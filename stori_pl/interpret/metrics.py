"""How readable are learned word weights? Explanation metrics where the truth is known (the toy world).

The truth is a :class:`GroundTruth` passed in (the toy world registers its own in :data:`GROUND_TRUTHS` when
:mod:`stori_pl.toy` is imported; :func:`ground_truth_for` finds the one that covers a model's classes). Every
toy class name is a (pattern, color, shape) triple (``"dotted red circle"``) and every other word of
its CuPL sentences is a nuisance (size, background), a filler (``simple``, ``neat``, ``photo`` ...) or a
function word / punctuation. So for each prompt word we know whether it *defines* the class, i.e. names one
of the class's own attribute values that separate it from the other classes of the benchmark (an
attribute whose value is the same for every class, e.g. the color when all classes are red, defines
nothing). Synonyms count as the value (``stripes`` for striped, ``dots`` for dotted).

Metrics, per prompt, averaged over a class's prompts (per class) and then over classes (the summary):

- ``discriminative_share``: share of the prompt's weight on defining words, divided by the same share with
  all weights 1 (``n_defining / n_words``). 1 = no change from zero-shot; 2 = twice the uniform share.
- ``precision_at_k``: of the ``k`` most weighted words (ties kept in prompt order), the fraction that are
  defining words, out of ``min(k, n_defining)`` (so a prompt naming only two of its class's values can
  still score 1).
- ``sink_share``: share of weight on function words, punctuation and nuisance words (size and background
  values, ``background``); ``sink_share_uniform`` is the same with all weights 1, for reference.
- ``sign_agreement``: over correctly classified images, the fraction of (image, defining word) pairs whose
  attribution (:func:`stori_pl.interpret.attribution.attribute`, summed over the class's prompts and over a
  value's synonyms) is positive: "weighting this word more would make the class more likely".

Input weights are what :meth:`StoriClassifier.word_weights` returns (per class, per prompt, ``(word, w)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stori_pl.text.function_words import is_function_word
from stori_pl.interpret.attribution import attribute_batch

WordWeights = Mapping[str, Sequence[Sequence[tuple[str, float]]]]


# ------------------------------------------------------------------------------------- ground truth
@dataclass(frozen=True)
class GroundTruth:
    """What is known about the words of a benchmark whose class names are attribute-value tuples.

    Attributes:
        attributes: ``attribute -> its values`` (the world's vocabulary).
        class_attributes: The attributes a class name is made of, in the order of its words.
        nuisance_attributes: Attributes that never define a class (their values count as sinks).
        synonyms: ``value -> other words naming it`` (``striped -> stripes``).
        sink_words: Further words that count as sinks (``background``).
    """

    attributes: Mapping[str, Sequence[str]]
    class_attributes: tuple[str, ...] = ("pattern", "color", "shape")
    nuisance_attributes: tuple[str, ...] = ("size", "background")
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sink_words: frozenset[str] = frozenset()

    def class_values(self, name: str) -> dict[str, str] | None:
        """``"dotted red circle"`` → ``{"pattern": "dotted", "color": "red", "shape": "circle"}``; None if
        ``name`` is not such a tuple."""
        parts = name.split()
        if len(parts) != len(self.class_attributes):
            return None
        values = dict(zip(self.class_attributes, parts))
        return values if all(values[a] in self.attributes[a] for a in self.class_attributes) else None

    def covers(self, classnames: Sequence[str]) -> bool:
        """True when there are at least two classes and every one is a class of this world."""
        return len(classnames) >= 2 and all(self.class_values(n) is not None for n in classnames)

    def is_sink(self, word: str) -> bool:
        """Function word, punctuation, nuisance value or one of :attr:`sink_words`."""
        word = word.strip().lower()
        nuisance = {v for a in self.nuisance_attributes for v in self.attributes[a]}
        return is_function_word(word) or word in nuisance or word in self.sink_words


GROUND_TRUTHS: dict[str, GroundTruth] = {}
"""Registered ground truths by name (``"toy"``, added by :mod:`stori_pl.toy`)."""


def ground_truth_for(classnames: Sequence[str]) -> GroundTruth | None:
    """The registered :class:`GroundTruth` that :meth:`~GroundTruth.covers` ``classnames``, or None."""
    return next((t for t in GROUND_TRUTHS.values() if t.covers(list(classnames))), None)


def defining_words(classnames: Sequence[str], truth: GroundTruth) -> dict[str, dict[str, str]]:
    """Per class, ``word → value`` for the words naming its discriminative attribute values.

    An attribute is discriminative when not all classes share its value (in the 12-class ToyShapes all
    three are). A value's words are the value itself and its synonyms.

    Raises:
        ValueError: if a class name is not a class of ``truth``'s world.
    """
    values = {n: truth.class_values(n) for n in classnames}
    bad = [n for n, v in values.items() if v is None]
    if bad:
        raise ValueError(
            f"not toy-world classes: {bad[:3]} (expected 'pattern color shape', e.g. 'dotted red circle'); "
            "explanation metrics need the toy world's ground truth"
        )
    varying = [a for a in truth.class_attributes if len({v[a] for v in values.values()}) > 1]
    out = {}
    for name, v in values.items():
        out[name] = {w: v[a] for a in varying for w in (v[a], *truth.synonyms.get(v[a], ()))}
    return out


# --------------------------------------------------------------------------------- weight metrics
def prompt_metrics(prompt: Sequence[tuple[str, float]], defining: Mapping[str, str], truth: GroundTruth,
                   k: int = 3) -> dict[str, float] | None:
    """Metrics of one prompt (see the module docstring); None when it has no words or no defining word.

    Args:
        prompt: ``[(word, weight), ...]`` (weights >= 0, any scale).
        defining: ``word → value`` of the prompt's class (from :func:`defining_words`).
        truth: The ground truth (which words are sinks).
        k: Words counted by ``precision_at_k``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    words = [w.strip().lower() for w, _ in prompt]
    weights = [max(float(v), 0.0) for _, v in prompt]
    is_def = [w in defining for w in words]
    n, n_def, total = len(words), sum(is_def), sum(weights)
    if n == 0 or n_def == 0 or total <= 0:
        return None
    order = sorted(range(n), key=lambda i: -weights[i])[:k]  # stable: ties in prompt order
    sink = [truth.is_sink(w) for w in words]
    return {
        "discriminative_share": sum(w for w, d in zip(weights, is_def) if d) / total / (n_def / n),
        "precision_at_k": sum(is_def[i] for i in order) / min(k, n_def),
        "sink_share": sum(w for w, s in zip(weights, sink) if s) / total,
        "sink_share_uniform": sum(sink) / n,
    }


def weight_metrics(weights: WordWeights, truth: GroundTruth, k: int = 3) -> dict[str, dict[str, float]]:
    """Per class, the mean over its prompts of :func:`prompt_metrics` (prompts without defining words skipped).

    Returns:
        ``{class: {metric: value}}`` for the classes with at least one scored prompt.
    """
    defining = defining_words(list(weights), truth)
    out = {}
    for name, prompts in weights.items():
        rows = [m for p in prompts if (m := prompt_metrics(p, defining[name], truth, k)) is not None]
        if rows:
            out[name] = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
    return out


# ------------------------------------------------------------------------------- sign agreement
def sign_agreement(model: Any, features: torch.Tensor, labels: torch.Tensor, truth: GroundTruth,
                   target: str = "log_prob", max_per_class: int | None = None) -> dict[str, float]:
    """Per class: fraction of (correctly classified image, defining value) pairs with a positive attribution.

    A value's attribution is the sum over the class's prompts and over the value's words (``dots`` and
    ``dotted``) of :func:`stori_pl.interpret.attribution.attribute`'s word attributions.

    Args:
        model: A built :class:`~stori_pl.models.StoriClassifier` with toy-world classes.
        features: Image features ``[N, D]``.
        labels: True labels ``[N]``.
        truth: The ground truth of the model's classes.
        target: Attribution target (``"log_prob"`` or ``"logit"``; the sign is the same for both).
        max_per_class: Score at most this many correct images per class (None: all).

    Returns:
        ``{class: agreement}`` for the classes with at least one correctly classified image.
    """
    names = model.classnames
    defining = defining_words(names, truth)
    preds = model.classify_features(features).argmax(-1).cpu()  # [N]
    labels = labels.cpu()
    out = {}
    for c, name in enumerate(names):
        rows = ((labels == c) & (preds == c)).nonzero().flatten()[:max_per_class]
        if len(rows) == 0:
            continue
        hits = total = 0
        for result in attribute_batch(model, features[rows], c, target=target):
            per_value: dict[str, float] = {}
            for prompt in result.prompts:
                for w, a in prompt:
                    value = defining[name].get(w.strip().lower())
                    if value is not None:
                        per_value[value] = per_value.get(value, 0.0) + a
            hits += sum(a > 0 for a in per_value.values())
            total += len(per_value)
        if total:
            out[name] = hits / total
    return out


# ------------------------------------------------------------------------------------- summary
@dataclass
class ExplanationMetrics:
    """Explanation metrics of one model: the class means and the per-class values.

    Attributes:
        summary: ``{metric: mean over classes}``.
        per_class: ``{class: {metric: value}}``.
        k: The ``k`` of ``precision_at_k``.
    """

    summary: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    k: int = 3

    def to_dict(self) -> dict:
        """JSON-ready: ``{"k", "summary", "per_class"}``."""
        return {"k": self.k, "summary": dict(self.summary), "per_class": {c: dict(m) for c, m in self.per_class.items()}}


def explanation_metrics(weights: WordWeights, truth: GroundTruth, k: int = 3, model: Any = None,
                        features: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                        max_per_class: int | None = None) -> ExplanationMetrics:
    """Weight metrics of ``weights``, plus ``sign_agreement`` when ``model``, ``features`` and ``labels`` are given.

    ``truth`` is the :class:`GroundTruth` of the classes (``ground_truth_for(classnames)``).

    Returns:
        :class:`ExplanationMetrics`; a metric's summary is the mean over the classes that have it.
    """
    per_class = weight_metrics(weights, truth, k)
    if model is not None and features is not None and labels is not None:
        for name, value in sign_agreement(model, features, labels, truth, max_per_class=max_per_class).items():
            per_class.setdefault(name, {})["sign_agreement"] = value
    keys = sorted({key for m in per_class.values() for key in m})
    summary = {}
    for key in keys:
        vals = [m[key] for m in per_class.values() if key in m]
        summary[key] = sum(vals) / len(vals)
    return ExplanationMetrics(summary, per_class, k)
