"""Word attributions for one prediction: which words pushed an image towards a class.

The attribution of a word is the derivative of a *target* with respect to that word's log-weight, at the
trained weights (attribution patching in weight space): positive means "weighting this word more would make
this image more of this class". A word made of several BPE pieces gets the sum over its pieces (the
derivative for shifting all of its pieces together). Targets:

- ``"log_prob"`` (default): ``log p(class | image)``, the log-softmax over all classes. It answers "why this
  class and not the others": it is the training objective itself (cross-entropy), it is on one scale for
  every image and class, and it saturates once the image is confidently classified. Only the class's own
  prompts act on its logit, so on those prompts ``d log p_c / d log w = (1 - p_c) · d logit_c / d log w``:
  the same sign as the logit's derivative, scaled by how much probability is left to win. We prefer it to
  the margin over the runner-up, whose runner-up class switches as weights move (a target that jumps is not
  differentiable there) and which ignores every class but two.
- ``"logit"``: the raw class logit ``logit_scale · <f, W_c>`` (its scale depends on how well every class
  matches, so values are hard to compare across images).

One forward and one backward pass through the class's prompts' reweighted blocks per image suffice.

**Contrastive targets and tied emphasis** (:func:`emphasis_derivatives`, :func:`contrastive_weights`). Only class
``c``'s own prompts act on ``logit_c``, so the derivative w.r.t. ``c``'s log-weights of *any* target that compares
``logit_c`` with other classes' logits (``log_prob``, or ``logit_c − logsumexp`` over a contrast set) has the sign of
``d logit_c / d log w``: it answers "does emphasizing this word raise this class's absolute logit?", and
emphasizing almost any content word lowers it (a sharper text embedding matches every image a little less). To
ask whether a word *discriminates* ``c`` from its contrast classes, the emphasis must move in the contrast classes'
prompts too: :func:`emphasis_derivatives` gives ``d logits / d ε`` for a *direction* of the log-weights of every
prompt (e.g. +1 on the words naming each prompt's own class's color), and :func:`contrastive_weights` the gradient
of ``T = logit_c − logsumexp_{c' ∈ contrast} logit_{c'}`` w.r.t. the logits, so ``dT/dε`` is their dot product:
"emphasizing the color words of ``c`` and of the classes that differ from it only in color makes the image more
``c`` than those". The common-mode effect of emphasis (every logit drops a little) cancels out.
:mod:`stori_pl.interpret.metrics` builds the directions from the toy world's ground truth.
Note that at a fully converged, unregularized optimum the training images' attributions average to about
zero (the gradient of the loss vanishes); with ``StoriClassifier(log_weight_l2=...)`` they balance the
penalty instead, so words the data pushed up get positive attributions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from stori_pl.data.image_io import open_rgb
from stori_pl.interpret import viz
from stori_pl.models.base import class_mean
from stori_pl.text.clip import tokenize
from stori_pl.text.encoder import WeightedTextEncoder
from stori_pl.text.syntax import token_words

TARGETS = ("log_prob", "logit")


@dataclass
class WordAttribution:
    """Attributions of one class's CuPL prompts for one image.

    Attributes:
        class_name: The class.
        class_index: Its label index.
        logit: The class logit for the image (``logit_scale · cosine``).
        prompts: Per CuPL prompt of the class, ``(word, d target / d log-weight)`` pairs.
        target: What was differentiated (``"log_prob"`` or ``"logit"``).
        log_prob: ``log p(class | image)``.
    """

    class_name: str
    class_index: int
    logit: float
    prompts: list[list[tuple[str, float]]] = field(default_factory=list)
    target: str = "log_prob"
    log_prob: float = float("nan")

    def top_words(self, k: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """``(most positive, most negative)`` word attributions over all prompts (summed per word)."""
        total: dict[str, float] = {}
        for p in self.prompts:
            for w, a in p:
                total[w] = total.get(w, 0.0) + a
        items = sorted(total.items(), key=lambda t: -t[1])
        return [t for t in items[:k] if t[1] > 0], [t for t in items[::-1][:k] if t[1] < 0]


def as_image_feature(model: Any, image: Any) -> torch.Tensor:
    """L2-normalized image feature ``[D]`` of a path, PIL image, preprocessed tensor ``[3, H, W]`` /
    ``[1, 3, H, W]``, or an image feature ``[D]`` / ``[1, D]`` (normalized here)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            image = open_rgb(image)  # every PIL mode to RGB; a decompression bomb refused (ImageTooLargeError)
        except FileNotFoundError as err:
            raise ValueError(f"cannot read image {os.fspath(image)!r}: {err}") from err
    if isinstance(image, torch.Tensor):
        if image.ndim <= 2:
            if image.ndim == 2 and image.shape[0] != 1:
                raise ValueError(f"attribute() takes one image; got features of shape {tuple(image.shape)}")
            return F.normalize(image.reshape(-1).float().to(model.device), dim=-1)  # [D]
        if image.ndim == 4 and image.shape[0] != 1:
            raise ValueError(f"attribute() takes one image; got a batch of shape {tuple(image.shape)}")
    return model.encode_images(image)[0].float()  # [D]


def attribute(model: Any, image: Any, class_index: int, target: str = "log_prob") -> WordAttribution:
    """Derivative of ``target`` for class ``class_index`` w.r.t. each word's log-weight, at the trained weights.

    Args:
        model: A built :class:`~stori_pl.models.StoriClassifier`.
        image: Path, PIL image, preprocessed tensor ``[3, H, W]``, or an image feature ``[D]``.
        class_index: Label index of the class to explain (e.g. the predicted one).
        target: ``"log_prob"`` (default; see the module docstring for why) or ``"logit"``.

    Returns:
        :class:`WordAttribution` with one ``[(word, attribution), ...]`` list per CuPL prompt of the class
        (same prompts and words, in the same order, as ``model.word_weights()[class_name]``).
    """
    names = model.classnames
    if not isinstance(class_index, int) or not 0 <= class_index < len(names):
        raise ValueError(f"class_index must be an int in 0..{len(names) - 1}, got {class_index!r}")
    return attribute_batch(model, as_image_feature(model, image)[None], class_index, target)[0]


def attribute_batch(model: Any, features: torch.Tensor, class_index: int, target: str = "log_prob") -> list[WordAttribution]:
    """:func:`attribute` for many image features ``[N, D]`` of one class (one forward pass, N backward passes).

    Returns:
        One :class:`WordAttribution` per image, in order.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if not isinstance(class_index, int) or not 0 <= class_index < model.num_classes:
        raise ValueError(f"class_index must be an int in 0..{model.num_classes - 1}, got {class_index!r}")
    c, name = class_index, model.classnames[class_index]
    with torch.no_grad():
        class_emb = model.class_embeddings().detach().float()  # [C, D]; only row c gets a graph below
    feats = F.normalize(features.float().to(model.device), dim=-1)  # [N, D]
    rows = (model.prompt_class[: model.n_cupl] == c).nonzero().flatten()  # [k] CuPL prompts of c
    with torch.enable_grad():
        log_w = model.effective_log_weights().detach()[rows].clone().requires_grad_(bool(len(rows)))  # [k, L']
        if len(rows):
            class_emb[c] = _class_embedding(model, c, rows, log_w)
        logits = model.logit_scale * feats @ class_emb.T  # [N, C]
        log_probs = logits.log_softmax(-1)[:, c]  # [N]
        chosen = log_probs if target == "log_prob" else logits[:, c]
        grads = [torch.autograd.grad(chosen[i], log_w, retain_graph=True)[0].float().cpu() for i in range(len(feats))] if len(rows) else []
    words = [token_words(t, model.tokenizer) for t in tokenize(model.prompt_set.cupl[c], model.tokenizer)]
    out = []
    for i in range(len(feats)):
        prompts = [[(w, float(grads[i][j, pos].sum())) for w, pos in words[j]] for j in range(len(rows))] if len(rows) else []
        out.append(WordAttribution(name, c, float(logits[i, c].detach()), prompts, target, float(log_probs[i].detach())))
    return out


def _class_embedding(model: Any, c: int, rows: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """Class ``c``'s embedding ``[D]`` from its CuPL prompts ``rows`` with ``log_w`` [k, L'] (+ base prompts).

    Same formula as ``StoriClassifier.class_embeddings`` (normalize(mean(normalize(prompt embeddings)))),
    restricted to one class and run through all text blocks (no prefix cache); tests check both agree.
    """
    encoder = WeightedTextEncoder(model.clip, start_block=model.hparams.start_block)
    tokens = tokenize(model.prompt_set.cupl[c], model.tokenizer).to(log_w.device)  # [k, 77]
    log_w = F.pad(log_w, (0, tokens.shape[1] - log_w.shape[1]))  # [k, 77]; SOS/EOT/padding are ignored
    emb = F.normalize(encoder(tokens, log_w).float(), dim=-1)  # [k, D]
    if model.base_embeddings is not None:
        base = model.prompt_class[model.n_cupl :] == c  # [B]
        emb = torch.cat([emb, model.base_embeddings[base].to(emb)])  # [k + b, D]
    return F.normalize(emb.sum(0), dim=-1)  # [D]


def emphasis_derivatives(model: Any, features: torch.Tensor, directions: torch.Tensor,
                         log_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and their derivatives along emphasis directions of the CuPL prompts' log-weights.

    With effective log-weights ``log_w + ε · directions[g]``, returns ``d logits / d ε`` at ``ε = 0`` for every
    direction ``g`` (exact, by double backpropagation: one forward pass of all prompts, one backward pass per
    direction; image features enter linearly, so any number of images costs one matrix product).

    Args:
        model: A built :class:`~stori_pl.models.StoriClassifier`.
        features: Image features ``[N, D]`` (normalized here).
        directions: ``[G, P, L']`` over the CuPL prompts (``P = model.n_cupl``, ``L'`` = the log-weights' length),
            e.g. 1 on some words' BPE pieces, 0 elsewhere.
        log_weights: Effective log-weights ``[P, L']`` to differentiate at (default: the model's own;
            ``torch.zeros(...)``: uniform weights, i.e. zero-shot of the same prompts).

    Returns:
        ``(logits [N, C], derivatives [G, N, C])`` (float32, on the CPU).
    """
    if log_weights is None:
        log_weights = model.effective_log_weights()
    log_w = log_weights.detach().float().to(model.device)  # [P, L']
    if directions.ndim != 3 or tuple(directions.shape[1:]) != tuple(log_w.shape):
        raise ValueError(f"directions must be [G, {log_w.shape[0]}, {log_w.shape[1]}], got {tuple(directions.shape)}")
    feats = F.normalize(features.float().to(model.device), dim=-1)  # [N, D]
    with torch.enable_grad():
        log_w.requires_grad_(True)
        emb = model.frozen.prepared.encode(log_w)  # [P, D] unnormalized, full graph (no gradient caching)
        emb = F.normalize(emb.float(), dim=-1)
        if model.base_embeddings is not None:
            emb = torch.cat([emb, model.base_embeddings.to(emb)])  # [P + B, D]
        class_emb = class_mean(emb, model.prompt_class, model.num_classes)  # [C, D]
        probe = torch.zeros_like(class_emb, requires_grad=True)  # [C, D]
        (vjp,) = torch.autograd.grad(class_emb, log_w, probe, create_graph=True)  # [P, L'], linear in probe
        jvps = [torch.autograd.grad((vjp * d.to(vjp)).sum(), probe, retain_graph=True, allow_unused=True)[0]
                for d in directions]  # G x [C, D]: d class_emb / d ε
    scale = float(model.logit_scale)
    logits = (scale * feats @ class_emb.detach().T).cpu()  # [N, C]
    derivs = torch.stack([scale * feats @ (u if u is not None else torch.zeros_like(class_emb)).T for u in jvps])
    return logits, derivs.detach().cpu()  # [N, C], [G, N, C]


def contrastive_weights(logits: torch.Tensor, class_index: int, contrast: list[int] | torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the logits of ``T = logit_c − logsumexp_{c' ∈ contrast} logit_{c'}``.

    ``T`` is the log-odds of class ``c`` against the classes it is contrasted with (for a toy class and one of
    its attributes: the classes equal to it on every attribute but that one), so ``dT/dε = Σ_k w_k dlogit_k/dε``
    for the returned ``w``: ``+1`` at ``c``, minus the softmax over ``contrast`` at the contrast classes.

    Args:
        logits: ``[N, C]``.
        class_index: The class ``c``.
        contrast: Indices of the contrast classes (not ``c``; at least one).

    Returns:
        ``[N, C]`` weights (each row sums to 0).
    """
    contrast = torch.as_tensor(contrast, dtype=torch.long).flatten()
    if len(contrast) == 0 or bool((contrast == class_index).any()):
        raise ValueError(f"contrast must name at least one class other than {class_index}, got {contrast.tolist()}")
    w = torch.zeros_like(logits)  # [N, C]
    w[:, contrast] = -logits[:, contrast].softmax(-1)
    w[:, class_index] += 1.0
    return w


def attribution_figures(result: WordAttribution, **kwargs) -> list:
    """Matplotlib pages of a :class:`WordAttribution` (red: towards the class, blue: away)."""
    what = f"log p {result.log_prob:.2f}" if result.target == "log_prob" else f"logit {result.logit:.2f}"
    subtitle = kwargs.pop("subtitle", f"word attributions of the {result.target.replace('_', '-')} ({what})")
    return viz.plot_word_weights(result.class_name, result.prompts, signed=True, subtitle=subtitle, **kwargs)
