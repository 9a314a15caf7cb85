"""SToRI: learn one weight per token of every CuPL prompt; CLIP stays frozen (Kim et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stori_pl.models.base import ClipClassifier, class_mean, encode_plain_prompts


class StoriClassifier(ClipClassifier):
    """Few-shot classifier whose only parameters are the token log-weights of the class prompts.

    Each class embedding is ``normalize(mean(normalize(prompt embeddings)))`` over the class's CuPL
    prompts (weighted by SToRI from ``start_block`` on) and, with ``use_base_prompts``, its base
    template prompts at fixed weight 1. Log-weights start at 0, which reproduces zero-shot CuPL exactly.

    Args:
        clip_model: open_clip architecture name (paper: ``ViT-L-14``).
        pretrained: open_clip tag, local checkpoint file, ``"builtin"`` or None (random init).
        start_block: First reweighted text block, 1-indexed (paper: 7).
        lr: Adam learning rate (paper: 1e-2 ImageNet/SUN397, 0.1 Food101 and 8/16-shot DTD/Flowers102,
            5e-2 otherwise).
        weight_decay: Adam weight decay (paper: 0).
        use_base_prompts: Include the base template prompts (fixed weights) in each class embedding.
        chunk_size: Encode prompts in chunks of this many with gradient caching (bounded memory for
            ImageNet-size prompt sets); None encodes all at once.
        prompts: ``PromptSet.to_dict()``; None → from the datamodule at the first fit (saved in the checkpoint).

    Example:
        >>> model = StoriClassifier.load_from_checkpoint("runs/dtd_16shot/version_0/checkpoints/last.ckpt")
        >>> probs = model.classify([Image.open("bark.jpg")])    # [1, C]
    """

    trained_state = ("log_weights",)

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        start_block: int = 7,
        lr: float = 0.05,
        weight_decay: float = 0.0,
        use_base_prompts: bool = True,
        chunk_size: int | None = None,
        prompts: dict | None = None,
    ):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
        super().__init__()
        self._finish_init(prompts)

    @property
    def method_name(self) -> str:
        return "SToRI"

    def _build_classifier(self, prompt_set) -> None:
        from stori_pl.text.clip import tokenize
        from stori_pl.text.encoder import WeightedTextEncoder

        cupl = [(c, t) for c, texts in enumerate(prompt_set.cupl) for t in texts]
        base = [(c, t) for c, texts in enumerate(prompt_set.base) for t in texts] if self.hparams.use_base_prompts else []
        if not cupl:
            raise ValueError("the prompt set has no CuPL prompts: SToRI has nothing to reweight")
        covered = {c for c, _ in cupl + base}
        missing = [n for i, n in enumerate(prompt_set.classnames) if i not in covered]
        if missing:
            raise ValueError(f"{len(missing)} classes have no prompts (e.g. {missing[:3]}); check the CuPL file")

        encoder = WeightedTextEncoder(self.clip, start_block=self.hparams.start_block)
        tokens = tokenize([t for _, t in cupl], self.tokenizer)  # [P, 77]
        prepared = encoder.prepare(tokens)  # prefix states [P, L', W]
        self.__dict__.update(_encoder=encoder, _prepared=prepared, _cupl_tokens=tokens.cpu())
        self.log_weights = nn.Parameter(torch.zeros(len(cupl), prepared.length, device=self.device))  # [P, L']
        self.register_buffer("weight_mask", prepared.mask.clone(), persistent=False)  # [P, L'] real tokens
        base_emb = encode_plain_prompts(self.clip, self.tokenizer, [t for _, t in base]) if base else None  # [B, D]
        self.register_buffer("base_embeddings", base_emb, persistent=False)
        index = torch.tensor([c for c, _ in cupl + base], dtype=torch.long, device=self.device)
        self.register_buffer("prompt_class", index, persistent=False)  # [P + B] class of each prompt
        self.n_cupl = len(cupl)

    def prompt_embeddings(self) -> torch.Tensor:
        """Embeddings ``[P, D]`` (unnormalized) of the CuPL prompts under the current weights."""
        self._require_built()
        log_w = self.log_weights.masked_fill(~self.weight_mask, 0.0)  # [P, L'] only real tokens count
        return self.__dict__["_prepared"].encode(log_w, chunk_size=self.hparams.chunk_size)

    def class_embeddings(self) -> torch.Tensor:
        """Class embeddings ``[C, D]`` (L2-normalized), differentiable w.r.t. ``log_weights``."""
        emb = F.normalize(self.prompt_embeddings(), dim=-1)  # [P, D]
        if self.base_embeddings is not None:
            emb = torch.cat([emb, self.base_embeddings.to(emb)])  # [P + B, D]
        return class_mean(emb, self.prompt_class, self.num_classes)

    def word_weights(self) -> dict[str, list[list[tuple[str, float]]]]:
        """Per class, per CuPL prompt: ``(word, weight)`` with weights summing to 1 within the prompt.

        A word's weight is the mean of ``exp(log_w)`` over its BPE pieces, so that all words start
        equal (1 / number of words) before training.
        """
        from stori_pl.text.syntax import token_words

        self._require_built()
        log_w = self.log_weights.detach().masked_fill(~self.weight_mask, 0.0).float().cpu()  # [P, L']
        out: dict[str, list[list[tuple[str, float]]]] = {name: [] for name in self.classnames}
        for p, c in enumerate(self.prompt_class[: self.n_cupl].tolist()):
            words = token_words(self.__dict__["_cupl_tokens"][p], self.tokenizer)
            raw = [float(log_w[p, pos].exp().mean()) for _, pos in words]
            total = sum(raw) or 1.0
            out[self.classnames[c]].append([(w, r / total) for (w, _), r in zip(words, raw)])
        return out

    def attribute(self, image, class_index: int, **kwargs):
        """Which words of the class's prompts support ``image`` — see :func:`stori_pl.interpret.attribution.attribute`."""
        from stori_pl.interpret.attribution import attribute

        return attribute(self, image, class_index, **kwargs)
