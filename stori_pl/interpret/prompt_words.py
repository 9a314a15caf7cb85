"""Words for learned prompts: CoOp's nearest words of each context vector, and IntCoOp's predicted attribute.

- **Context vectors** (CoOp and IntCoOp): as ``KaiyangZhou/CoOp`` ``interpret_prompt.py`` — the vocabulary
  tokens nearest to each vector by Euclidean distance in the token-embedding space (SOS/EOT excluded).
- **Attribute** (IntCoOp): the word nearest to ``A(f(I))`` by cosine similarity. The vocabulary is the label
  words the extractor was trained towards (stored in the checkpoint); a model without them falls back to the
  tokenizer's whole-word tokens (BPE entries ending a word). Our choice: the labels are the words ``A`` was
  taught, and the full vocabulary of a small CLIP holds many never-trained tokens.
- **The prompt as text**: each vector replaced by its nearest word, ``A(I)`` by its attribute word.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stori_pl.models.intcoop_parts import nearest_words
from stori_pl.text.clip import text_tower
from stori_pl.interpret.attribution import as_image_feature


@dataclass
class PromptReading:
    """One image's IntCoOp prompt in words.

    Attributes:
        attribute: The predicted attribute word.
        similarity: Its cosine similarity to ``A(f(I))``.
        alternatives: The next-best ``(word, similarity)`` pairs.
        context: Per context vector ``ctx(I)_m``, its nearest ``(token, distance)`` pairs.
        prompt: The prompt as text for the top class, e.g. ``"a photo of a large striped red circle."``.
    """

    attribute: str
    similarity: float
    alternatives: list[tuple[str, float]]
    context: list[list[tuple[str, float]]]
    prompt: str


def token_text(tokenizer, token_id: int) -> str:
    """Readable text of one BPE token: ``"photo</w>"`` -> ``"photo"``, byte pieces decoded as UTF-8 (``"à¸¡"`` ->
    ``"ม"``; a piece of a longer character shows as ``"\ufffd"``)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    decoder = getattr(tok, "decoder", None)
    if decoder is None:
        return tokenizer.decode([token_id]).strip()
    piece = decoder[token_id].replace("</w>", "")
    byte_decoder = getattr(tok, "byte_decoder", None)
    if byte_decoder is None:
        return piece
    return bytes(byte_decoder[c] for c in piece).decode("utf-8", errors="replace")


def special_ids(tokenizer) -> set[int]:
    """SOS and EOT ids of an open_clip tokenizer."""
    ids = tokenizer(["x"])[0]
    return {int(ids[0]), int(ids[int(ids.argmax())])}


def context_words(model, ctx: torch.Tensor | None = None, k: int = 5) -> list[list[tuple[str, float]]]:
    """Nearest vocabulary tokens (Euclidean, as CoOp's ``interpret_prompt.py``) of each context vector.

    Args:
        model: A built CoOp or IntCoOp.
        ctx: ``[M, W]`` vectors (default: the model's learned ``ctx``).
        k: Tokens per vector.

    Returns:
        Per vector, ``k`` ``(token, distance)`` pairs, nearest first.
    """
    table = text_tower(model.clip).token_embedding.weight.detach().float()  # [V, W]
    ctx = (model.ctx if ctx is None else ctx).detach().float().to(table.device)
    dist = torch.cdist(ctx, table)  # [M, V]
    dist[:, list(special_ids(model.tokenizer))] = float("inf")
    values, index = dist.topk(k, dim=1, largest=False)
    return [[(token_text(model.tokenizer, int(i)), float(d)) for d, i in zip(vs, ix)] for vs, ix in zip(values, index)]


def attribute_vocabulary(model) -> tuple[list[str], torch.Tensor]:
    """The words to name ``A(I)`` with and their embeddings ``[V, W]`` (see the module docstring)."""
    if model.attribute_words:
        return model.attribute_words, model.word_table
    tok = model.tokenizer
    decoder = getattr(getattr(tok, "tokenizer", tok), "decoder", {})
    ids = [i for i, t in decoder.items() if t.endswith("</w>") and t[:-4].isalpha()]
    table = text_tower(model.clip).token_embedding.weight.detach()[ids]
    return [decoder[i][:-4] for i in ids], table


def predicted_attributes(model, features: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-``k`` attribute words of image embeddings ``[N, D]``: per image ``(word, cosine)`` pairs, best first."""
    words, table = attribute_vocabulary(model)
    with torch.no_grad():
        sim, index = nearest_words(model.extractor(features.to(model.device)), table.to(model.device), k)
    return [[(words[int(i)], float(s)) for s, i in zip(ss, ix)] for ss, ix in zip(sim, index)]


def read_prompt(model, feature: torch.Tensor, classname: str, k: int = 3) -> PromptReading:
    """One image's prompt in words: the attribute, the conditioned context's nearest tokens, the prompt text.

    Args:
        model: A built IntCoOp.
        feature: The image's embedding ``[D]``.
        classname: The class name to write the prompt for (e.g. the top class).
        k: Alternatives per slot.
    """
    with torch.no_grad():
        ctx = model.conditioner(model.ctx, feature[None].to(model.device))[0]  # [M, W]
    (best, *rest), = predicted_attributes(model, feature[None], k + 1)
    context = context_words(model, ctx, k)
    words = [c[0][0] for c in context] + [best[0], classname.replace("_", " ")]
    return PromptReading(best[0], best[1], rest, context, " ".join(words) + ".")


def explain_prompt_model(model, path: str, image=None, top: int = 5) -> str:
    """Text report of a loaded CoOp / IntCoOp model (``path`` names it in the report): each context vector's
    nearest words, and with ``image`` the top classes, the predicted attribute (IntCoOp) and the image's prompt
    as text.

    Raises:
        ValueError: An unreadable image.
    """
    name = type(model).__name__
    k = max(1, min(top, 5))
    lines = [f"{path}: {name} on CLIP {model.hparams.clip_model} ({model.hparams.pretrained}), "
             f"{model.num_classes} classes, {len(model.ctx)} context vectors",
             "\nLearned context vectors, nearest tokens (Euclidean distance in token-embedding space, as CoOp):"]
    lines += [f"  ctx {m + 1}: " + ", ".join(f"{w} {d:.3f}" for w, d in ws) for m, ws in enumerate(context_words(model, k=k))]
    if image is None:
        return "\n".join(lines)
    feature = as_image_feature(model, image)  # [D]
    probs = model.classify_features(feature[None])[0]
    best = probs.topk(min(5, len(probs)))
    lines.append(f"\n{image}: predicted classes")
    lines += [f"  {p:7.2%}  {model.classnames[i]}" for p, i in zip(best.values.tolist(), best.indices.tolist())]
    if name == "IntCoOp":
        reading = read_prompt(model, feature, model.classnames[int(best.indices[0])], k)
        alts = ", ".join(f"{w} {s:.3f}" for w, s in reading.alternatives) or "—"
        lines += [f"\nPredicted attribute: {reading.attribute} (cosine {reading.similarity:.3f}; next: {alts})",
                  f"Prompt as text: {reading.prompt}",
                  "Context conditioned on this image, nearest tokens:"]
        lines += [f"  ctx(I) {m + 1}: " + ", ".join(f"{w} {d:.3f}" for w, d in ws) for m, ws in enumerate(reading.context)]
    return "\n".join(lines)
