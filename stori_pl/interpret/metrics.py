"""How readable are learned word weights? Explanation metrics where the truth is known (the toy world).

The truth is a :class:`GroundTruth` passed in (the toy world registers its own in :data:`GROUND_TRUTHS` when
:mod:`stori_pl.toy` is imported; :func:`ground_truth_for` finds the one that covers a model's classes). Every
toy class name is a (pattern, color, shape) triple (``"dotted red circle"``) and every other word of
its CuPL sentences is a nuisance (size, background), a filler (``simple``, ``neat``, ``photo`` ...) or a
function word / punctuation. So for each prompt word we know whether it *defines* the class, i.e. names one
of the class's own attribute values that separate it from the other classes of the benchmark (an
attribute whose value is the same for every class, e.g. the color when all classes are red, defines
nothing). Synonyms count as the value (``stripes`` for striped, ``dots`` for dotted).

Metrics, per prompt, averaged over a class's prompts (per class) and then over classes (the summary); each has a
``<metric>_uniform`` baseline, the same metric with every token weight 1 (zero-shot of the same prompts):

- ``discriminative_share``: share of the prompt's weight on defining words, divided by the same share with
  all weights 1 (``n_defining / n_words``). 1 = no change from zero-shot (so ``discriminative_share_uniform``
  is 1); 2 = twice the uniform share.
- ``precision_at_k`` (printed as ``precision_at_3`` for k 3): of the ``k`` most weighted words (ties kept in
  prompt order), the fraction that are defining words, out of ``min(k, n_defining)`` (so a prompt naming only
  two of its class's values can still score 1). With all weights 1 it is the share of defining words among
  the prompt's first ``k`` words.
- ``sink_share``: share of weight on function words, punctuation and nuisance words (size and background
  values, ``background``); ``sink_share_uniform`` is the same with all weights 1, for reference.
- ``distractor_share`` (prompts that mention a distractor object, as the spurious-cue variant's do: the words
  after :attr:`GroundTruth.distractor_marker`, function words aside): share of the prompt's weight on the
  distractor's words ÷ their share with all weights 1. > 1: training moved weight onto the spurious cue.
- ``sign_agreement`` (contrastive target, defining words): over correctly classified images and the class's
  defining attributes ``a`` (those its prompts name), the fraction of (image, attribute) pairs where
  emphasizing the words naming ``a``'s value raises ``T_a = logit_c − logsumexp_{c'} logit_{c'}`` over the
  classes ``c'`` equal to ``c`` on every attribute but ``a`` ("emphasizing *red* makes this image more the red
  class than its blue / green / yellow twins"). The emphasis is tied: each class's own ``a``-words, in ``c``'s
  prompts and in the contrast classes' (see :mod:`stori_pl.interpret.attribution` for why a derivative w.r.t.
  ``c``'s weights alone cannot tell discriminative words from any other: its sign is that of ``d logit_c``).
- ``sign_agreement_nuisance``: the same target ``T_a`` and tied emphasis on nuisance words (size values,
  background values) instead: over (image, attribute ``a``, nuisance attribute) pairs. Nuisances do not tell a
  class from its twins, so a readable model stays near 0.5 here while ``sign_agreement`` is high.
- ``sign_agreement_absolute``: the pre-issue-22 metric, for reference: the sign of the derivative of the class's
  own (absolute) logit along its defining words (the same sign as for ``log p(class)``).

Per class only (no uniform baseline: with all weights 1 no word is emphasized):

- ``top_word_defining``: 1 when the class's most emphasized word, as ``stori explain`` names it first
  (``emphasized:``, the geometric mean of its emphasis over the class's prompts, function words left out; the
  caption of the per-class word-weight figure), is one of its defining words, else 0; the summary is the
  share of classes (Fig. 2 of the paper: the figure names the defining words).

For sign agreement, ``<metric>_uniform`` is the same model with its log-weights reset to 0 (on the images that
model classifies correctly).

Input weights are what :meth:`StoriClassifier.word_weights` returns (per class, per prompt, ``(word, w)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stori_pl.interpret.attribution import contrastive_weights, emphasis_derivatives
from stori_pl.interpret.viz.words import top_words
from stori_pl.text.function_words import is_function_word
from stori_pl.text.syntax import token_words

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
        distractor_marker: Words that introduce a distractor object in a prompt (``("next", "to")``): the
            words after them name the distractor (an empty tuple: prompts never name one).
    """

    attributes: Mapping[str, Sequence[str]]
    class_attributes: tuple[str, ...] = ("pattern", "color", "shape")
    nuisance_attributes: tuple[str, ...] = ("size", "background")
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sink_words: frozenset[str] = frozenset()
    distractor_marker: tuple[str, ...] = ()

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

    def distractor_words(self, words: Sequence[str]) -> list[bool]:
        """Per word of a prompt: True for the words naming its distractor object (after the first
        :attr:`distractor_marker`, function words and punctuation aside)."""
        words = [w.strip().lower() for w in words]
        m = len(self.distractor_marker)
        start = next((i + m for i in range(len(words) - m + 1) if m and tuple(words[i : i + m]) == self.distractor_marker),
                     len(words))
        return [i >= start and not is_function_word(w) for i, w in enumerate(words)]


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
    distractor = truth.distractor_words(words)
    is_def = [w in defining and not d for w, d in zip(words, distractor)]  # the distractor's "circle" names no class
    n, n_def, total = len(words), sum(is_def), sum(weights)
    if n == 0 or n_def == 0 or total <= 0:
        return None
    order = sorted(range(n), key=lambda i: -weights[i])[:k]  # stable: ties in prompt order
    sink = [truth.is_sink(w) for w in words]
    out = {
        "discriminative_share": sum(w for w, d in zip(weights, is_def) if d) / total / (n_def / n),
        "precision_at_k": sum(is_def[i] for i in order) / min(k, n_def),
        "sink_share": sum(w for w, s in zip(weights, sink) if s) / total,
        "sink_share_uniform": sum(sink) / n,
    }
    if any(distractor):
        out["distractor_share"] = sum(w for w, d in zip(weights, distractor) if d) / total / (sum(distractor) / n)
    return out


UNIFORM_BASELINES = ("discriminative_share", "precision_at_k", "distractor_share")
"""Weight metrics that get a ``<metric>_uniform`` baseline from :func:`weight_metrics` (``sink_share_uniform``
comes with every prompt)."""


def weight_metrics(weights: WordWeights, truth: GroundTruth, k: int = 3, uniform: bool = True) -> dict[str, dict[str, float]]:
    """Per class, the mean over its prompts of :func:`prompt_metrics` (prompts without defining words skipped).

    A metric only some prompts have (``distractor_share``) is the mean over those prompts.

    Args:
        uniform: Add ``<metric>_uniform`` for :data:`UNIFORM_BASELINES`: the same prompts with all weights 1.

    Returns:
        ``{class: {metric: value}}`` for the classes with at least one scored prompt.
    """
    defining = defining_words(list(weights), truth)
    out = {}
    for name, prompts in weights.items():
        rows = [m for p in prompts if (m := prompt_metrics(p, defining[name], truth, k)) is not None]
        if not rows:
            continue
        out[name] = _mean_rows(rows)
        up, _ = top_words({name: prompts}, 1, over="prompts")
        if up:
            out[name]["top_word_defining"] = float(up[0][0].strip().lower() in defining[name])
        if uniform:
            flat = [m for p in prompts if (m := prompt_metrics([(w, 1.0) for w, _ in p], defining[name], truth, k))]
            out[name].update({f"{key}_uniform": v for key, v in _mean_rows(flat).items() if key in UNIFORM_BASELINES})
    return out


def _mean_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(key for r in rows for key in r))
    return {key: sum(vals) / len(vals) for key in keys if (vals := [r[key] for r in rows if key in r])}


# ------------------------------------------------------------------------------- sign agreement
SIGN_METRICS = ("sign_agreement", "sign_agreement_nuisance", "sign_agreement_absolute")


def emphasis_groups(model: Any, truth: GroundTruth) -> tuple[list[str], torch.Tensor]:
    """Emphasis directions over the model's CuPL prompts, one per attribute: ``(attributes, [G, P, L'])``.

    For a defining (varying) attribute ``a``, the direction is 1 on the BPE pieces of the words naming, in each
    prompt, *its own class's* value of ``a`` (or a synonym); for a nuisance attribute, on the words naming any
    of its values. Words naming a distractor object (:meth:`GroundTruth.distractor_words`) are left out.
    """
    names = model.classnames
    values = [truth.class_values(n) for n in names]
    if any(v is None for v in values):
        raise ValueError(f"not toy-world classes: {[n for n, v in zip(names, values) if v is None][:3]}")
    varying = [a for a in truth.class_attributes if len({v[a] for v in values}) > 1]
    groups = varying + list(truth.nuisance_attributes)
    log_w = model.effective_log_weights()  # [P, L']
    dirs = torch.zeros(len(groups), *log_w.shape)  # [G, P, L']
    for p, c in enumerate(model.prompt_class[: model.n_cupl].tolist()):
        words = token_words(model.frozen.cupl_tokens[p], model.tokenizer)
        in_distractor = truth.distractor_words([w for w, _ in words])
        for (word, pos), skip in zip(words, in_distractor):
            word = word.strip().lower()
            if skip:
                continue
            for g, a in enumerate(groups):
                own = values[c][a] if a in values[c] else None
                names_it = (word == own or word in truth.synonyms.get(own, ())) if own is not None else \
                    any(word == v or word in truth.synonyms.get(v, ()) for v in truth.attributes[a])
                if names_it:
                    dirs[g, p, pos] = 1.0
    return groups, dirs


def contrast_classes(classnames: Sequence[str], truth: GroundTruth, c: int, attribute: str) -> list[int]:
    """Indices of the classes equal to class ``c`` on every class attribute but ``attribute`` (its "twins")."""
    vals = [truth.class_values(n) for n in classnames]
    return [k for k, v in enumerate(vals) if k != c and v[attribute] != vals[c][attribute]
            and all(v[a] == vals[c][a] for a in truth.class_attributes if a != attribute)]


def sign_agreement(model: Any, features: torch.Tensor, labels: torch.Tensor, truth: GroundTruth,
                   max_per_class: int | None = None, log_weights: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """Per class: the sign agreements of the module docstring, over its correctly classified images.

    Args:
        model: A built :class:`~stori_pl.models.StoriClassifier` with toy-world classes.
        features: Image features ``[N, D]``.
        labels: True labels ``[N]``.
        truth: The ground truth of the model's classes.
        max_per_class: Score at most this many correct images per class (None: all).
        log_weights: Effective log-weights ``[P, L']`` to score instead of the model's (zeros: uniform weights).

    Returns:
        ``{class: {"sign_agreement", "sign_agreement_nuisance", "sign_agreement_absolute": value}}`` (a key
        only where the class has such pairs; classes without a correctly classified image left out).
    """
    names = model.classnames
    groups, dirs = emphasis_groups(model, truth)
    logits, derivs = emphasis_derivatives(model, features, dirs, log_weights)  # [N, C], [G, N, C]
    labels = labels.cpu()
    preds = logits.argmax(-1)
    defining = [g for g, a in enumerate(groups) if a not in truth.nuisance_attributes]
    nuisance = [g for g, a in enumerate(groups) if a in truth.nuisance_attributes]
    own_prompts = model.prompt_class[: model.n_cupl].cpu()
    out = {}
    for c, name in enumerate(names):
        rows = ((labels == c) & (preds == c)).nonzero().flatten()[:max_per_class]
        if len(rows) == 0:
            continue
        mentions = dirs[:, own_prompts == c].flatten(1).any(-1)  # [G] does the class's own text name it
        counts = {key: [0, 0] for key in SIGN_METRICS}
        for g in defining:
            if not mentions[g]:
                continue
            counts["sign_agreement_absolute"][0] += int((derivs[g, rows, c] > 0).sum())
            counts["sign_agreement_absolute"][1] += len(rows)
            contrast = contrast_classes(names, truth, c, groups[g])
            if not contrast:  # no class differs from c in this attribute only (never in the full ToyShapes grid)
                continue
            w = contrastive_weights(logits[rows], c, contrast)  # [n, C]
            counts["sign_agreement"][0] += int(((w * derivs[g, rows]).sum(-1) > 0).sum())
            counts["sign_agreement"][1] += len(rows)
            for h in nuisance:
                if mentions[h]:
                    counts["sign_agreement_nuisance"][0] += int(((w * derivs[h, rows]).sum(-1) > 0).sum())
                    counts["sign_agreement_nuisance"][1] += len(rows)
        row = {key: hits / total for key, (hits, total) in counts.items() if total}
        if row:
            out[name] = row
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

    def name(self, key: str) -> str:
        """The printed / written name of a metric: ``precision_at_k`` → ``precision_at_3`` (for k 3)."""
        return key.replace("_at_k", f"_at_{self.k}")

    def to_dict(self) -> dict:
        """JSON-ready: ``{"k", "summary", "per_class"}``, metrics by their printed names (:meth:`name`)."""
        return {"k": self.k, "summary": {self.name(key): v for key, v in self.summary.items()},
                "per_class": {c: {self.name(key): v for key, v in m.items()} for c, m in self.per_class.items()}}


def explanation_metrics(weights: WordWeights, truth: GroundTruth, k: int = 3, model: Any = None,
                        features: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                        max_per_class: int | None = None, uniform: bool = True) -> ExplanationMetrics:
    """Weight metrics of ``weights``, plus the sign agreements when ``model``, ``features`` and ``labels`` are given.

    ``truth`` is the :class:`GroundTruth` of the classes (``ground_truth_for(classnames)``).

    Args:
        uniform: Add every metric's ``<metric>_uniform`` baseline (all weights 1; for sign agreement, the
            model's log-weights reset to 0).

    Returns:
        :class:`ExplanationMetrics`; a metric's summary is the mean over the classes that have it.
    """
    per_class = weight_metrics(weights, truth, k, uniform)
    if model is not None and features is not None and labels is not None:
        for name, row in sign_agreement(model, features, labels, truth, max_per_class).items():
            per_class.setdefault(name, {}).update(row)
        if uniform:
            zeros = torch.zeros_like(model.effective_log_weights())
            for name, row in sign_agreement(model, features, labels, truth, max_per_class, log_weights=zeros).items():
                per_class.setdefault(name, {}).update({f"{key}_uniform": v for key, v in row.items()})
    keys = sorted({key for m in per_class.values() for key in m})
    summary = {}
    for key in keys:
        vals = [m[key] for m in per_class.values() if key in m]
        summary[key] = sum(vals) / len(vals)
    return ExplanationMetrics(summary, per_class, k)
