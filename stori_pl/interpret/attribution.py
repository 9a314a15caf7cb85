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


def attribution_figures(result: WordAttribution, **kwargs) -> list:
    """Matplotlib pages of a :class:`WordAttribution` (red: towards the class, blue: away)."""
    what = f"log p {result.log_prob:.2f}" if result.target == "log_prob" else f"logit {result.logit:.2f}"
    subtitle = kwargs.pop("subtitle", f"word attributions of the {result.target.replace('_', '-')} ({what})")
    return viz.plot_word_weights(result.class_name, result.prompts, signed=True, subtitle=subtitle, **kwargs)
