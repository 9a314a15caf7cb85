"""Word attributions for one prediction: which words pushed an image towards a class.

The attribution of a word is the gradient of the class logit ``logit_scale · <f, W_c>`` with respect to
that word's log-weight, at the trained weights (attribution patching in weight space): positive means
"weighting this word more would raise the class score for this image". A word made of several BPE
pieces gets the sum over its pieces (the derivative for shifting all of its pieces together). Only the
class's own prompts influence its logit, so one forward and one backward pass through those prompts'
reweighted blocks suffice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class WordAttribution:
    """Attributions of one class's CuPL prompts for one image.

    Attributes:
        class_name: The class.
        class_index: Its label index.
        logit: The class logit for the image (``logit_scale · cosine``).
        prompts: Per CuPL prompt of the class, ``(word, d logit / d log-weight)`` pairs.
    """

    class_name: str
    class_index: int
    logit: float
    prompts: list[list[tuple[str, float]]] = field(default_factory=list)

    def top_words(self, k: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """``(most positive, most negative)`` word attributions over all prompts (summed per word)."""
        total: dict[str, float] = {}
        for p in self.prompts:
            for w, a in p:
                total[w] = total.get(w, 0.0) + a
        items = sorted(total.items(), key=lambda t: -t[1])
        return [t for t in items[:k] if t[1] > 0], [t for t in items[::-1][:k] if t[1] < 0]


def image_features(model: Any, image: Any) -> torch.Tensor:
    """L2-normalized image feature ``[D]`` of a path, PIL image, preprocessed tensor ``[3, H, W]`` /
    ``[1, 3, H, W]``, or an image feature ``[D]`` / ``[1, D]`` (normalized here)."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as im:
                image = im.convert("RGB")
        except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {os.fspath(image)!r}: {err}") from err
    if isinstance(image, torch.Tensor):
        if image.ndim <= 2:
            if image.ndim == 2 and image.shape[0] != 1:
                raise ValueError(f"attribute() takes one image; got features of shape {tuple(image.shape)}")
            return F.normalize(image.reshape(-1).float().to(model.device), dim=-1)  # [D]
        if image.ndim == 4 and image.shape[0] != 1:
            raise ValueError(f"attribute() takes one image; got a batch of shape {tuple(image.shape)}")
    return model.encode_images(image)[0].float()  # [D]


def attribute(model: Any, image: Any, class_index: int) -> WordAttribution:
    """Gradient of class ``class_index``'s logit w.r.t. each word's log-weight, at the trained weights.

    Args:
        model: A built :class:`~stori_pl.models.StoriClassifier`.
        image: Path, PIL image, preprocessed tensor ``[3, H, W]``, or an image feature ``[D]``.
        class_index: Label index of the class to explain (e.g. the predicted one).

    Returns:
        :class:`WordAttribution` with one ``[(word, attribution), ...]`` list per CuPL prompt of the class
        (same prompts and words, in the same order, as ``model.word_weights()[class_name]``).
    """
    from stori_pl.text.clip import tokenize
    from stori_pl.text.syntax import token_words

    names = model.classnames
    if not isinstance(class_index, int) or not 0 <= class_index < len(names):
        raise ValueError(f"class_index must be an int in 0..{len(names) - 1}, got {class_index!r}")
    feature = image_features(model, image)  # [D]
    rows = (model.prompt_class[: model.n_cupl] == class_index).nonzero().flatten()  # [k] CuPL prompts of c
    if len(rows) == 0:  # only fixed base prompts: nothing to attribute
        with torch.no_grad():
            logit = model(feature[None])[0, class_index]
        return WordAttribution(names[class_index], class_index, float(logit), [])
    with torch.enable_grad():
        log_w = model.log_weights.detach()[rows].clone().requires_grad_(True)  # [k, L']
        class_emb = _class_embedding(model, class_index, rows, log_w)  # [D]
        logit = model.logit_scale * feature.to(class_emb) @ class_emb
        (grad,) = torch.autograd.grad(logit, log_w)  # [k, L']
    grad = grad.float().cpu()
    tokens = tokenize(model.prompt_set.cupl[class_index], model.tokenizer)  # [k, 77]
    prompts = []
    for i in range(len(rows)):
        words = token_words(tokens[i], model.tokenizer)
        prompts.append([(w, float(grad[i, pos].sum())) for w, pos in words])
    return WordAttribution(names[class_index], class_index, logit.item(), prompts)


def _class_embedding(model: Any, c: int, rows: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """Class ``c``'s embedding ``[D]`` from its CuPL prompts ``rows`` with ``log_w`` [k, L'] (+ base prompts).

    Same formula as ``StoriClassifier.class_embeddings`` (normalize(mean(normalize(prompt embeddings)))),
    restricted to one class and run through all text blocks (no prefix cache); tests check both agree.
    """
    from stori_pl.text.clip import tokenize
    from stori_pl.text.encoder import WeightedTextEncoder

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
    from stori_pl.interpret import viz

    subtitle = kwargs.pop("subtitle", f"word attributions (logit {result.logit:.2f})")
    return viz.plot_word_weights(result.class_name, result.prompts, signed=True, subtitle=subtitle, **kwargs)
