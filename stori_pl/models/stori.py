"""SToRI: learn one weight per token of every CuPL prompt; CLIP stays frozen (Kim et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stori_pl.models.base import ClipClassifier, class_mean, encode_plain_prompts
from stori_pl.text.clip import tokenize
from stori_pl.text.encoder import WeightedTextEncoder
from stori_pl.text.function_words import is_function_word
from stori_pl.text.syntax import token_words


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
        log_weight_l2: Coefficient of ``mean(log_w²)`` (over the trained tokens) added to the training loss:
            pulls log-weights towards 0 (weight 1), so only words the data asks for move (paper: 0).
        log_weight_l1: Coefficient of ``mean(|log_w|)`` added to the training loss (paper: 0).
        max_log_weight: Bound ``B`` on the log-weights: the encoder sees ``B · tanh(log_w / B)``, so no weight
            leaves ``[e^-B, e^B]``; None: unbounded (paper).
        freeze_function_words: Function words and punctuation (:mod:`stori_pl.text.function_words`) keep
            weight 1 (paper: False, every token is trained).
        prompts: ``PromptSet.to_dict()``; None → from the datamodule at the first fit (saved in the checkpoint).

    Example:
        >>> model = StoriClassifier.load_from_checkpoint("runs/dtd_16shot/version_0/checkpoints/last.ckpt")
        >>> probs = model.classify([Image.open("bark.jpg")])    # [1, C]
    """


    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        start_block: int = 7,
        lr: float = 0.05,
        weight_decay: float = 0.0,
        use_base_prompts: bool = True,
        chunk_size: int | None = None,
        log_weight_l2: float = 0.0,
        log_weight_l1: float = 0.0,
        max_log_weight: float | None = None,
        freeze_function_words: bool = False,
        prompts: dict | None = None,
    ):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
        if log_weight_l2 < 0 or log_weight_l1 < 0:
            raise ValueError(f"log_weight_l2 and log_weight_l1 must be >= 0, got {log_weight_l2}, {log_weight_l1}")
        if max_log_weight is not None and not max_log_weight > 0:
            raise ValueError(f"max_log_weight must be > 0 or None, got {max_log_weight}")
        super().__init__()
        self.save_hyperparameters(ignore=["prompts"])  # the checkpoint keeps the prompts in its "stori" entry
        self._finish_init(prompts)

    @property
    def method_name(self) -> str:
        return "SToRI"

    def _build_classifier(self, prompt_set) -> None:
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
        self.frozen.encoder, self.frozen.prepared, self.frozen.cupl_tokens = encoder, prepared, tokens.cpu()
        self.log_weights = nn.Parameter(torch.zeros(len(cupl), prepared.length, device=self.device))  # [P, L']
        mask = prepared.mask.clone()  # [P, L'] real tokens
        if self.hparams.get("freeze_function_words"):
            mask &= ~function_word_mask(tokens, self.tokenizer, mask.shape[1]).to(mask.device)
        self.register_buffer("weight_mask", mask, persistent=False)  # [P, L'] trained tokens
        base_emb = encode_plain_prompts(self.clip, self.tokenizer, [t for _, t in base]) if base else None  # [B, D]
        self.register_buffer("base_embeddings", base_emb, persistent=False)
        index = torch.tensor([c for c, _ in cupl + base], dtype=torch.long, device=self.device)
        self.register_buffer("prompt_class", index, persistent=False)  # [P + B] class of each prompt
        self.n_cupl = len(cupl)

    def effective_log_weights(self) -> torch.Tensor:
        """Log-weights ``[P, L']`` the encoder uses: 0 outside the trained tokens, bounded by ``max_log_weight``."""
        self._check_ready()
        log_w = self.log_weights.masked_fill(~self.weight_mask, 0.0)  # [P, L'] only trained tokens count
        bound = self.hparams.get("max_log_weight")
        return bound * torch.tanh(log_w / bound) if bound else log_w

    def trainable_log_weights(self) -> torch.Tensor:
        """1-D tensor of the effective log-weights of the trained tokens (for histograms)."""
        return self.effective_log_weights()[self.weight_mask]

    def log_weight_penalty(self) -> torch.Tensor | None:
        """``log_weight_l2 · mean(log_w²) + log_weight_l1 · mean(|log_w|)`` over the trained tokens, or None."""
        l2, l1 = self.hparams.get("log_weight_l2", 0.0), self.hparams.get("log_weight_l1", 0.0)
        if not (l2 or l1):
            return None
        log_w = self.trainable_log_weights()  # [T]
        return l2 * log_w.square().mean() + l1 * log_w.abs().mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        penalty = self.log_weight_penalty()
        if penalty is None:
            return loss
        self.log("train/log_weight_penalty", penalty)
        return loss + penalty

    def prompt_embeddings(self) -> torch.Tensor:
        """Embeddings ``[P, D]`` (unnormalized) of the CuPL prompts under the current weights."""
        log_w = self.effective_log_weights()  # [P, L']
        return self.frozen.prepared.encode(log_w, chunk_size=self.hparams.chunk_size)

    def class_embeddings(self) -> torch.Tensor:
        """Class embeddings ``[C, D]`` (L2-normalized), differentiable w.r.t. ``log_weights``."""
        emb = F.normalize(self.prompt_embeddings(), dim=-1)  # [P, D]
        if self.base_embeddings is not None:
            emb = torch.cat([emb, self.base_embeddings.to(emb)])  # [P + B, D]
        return class_mean(emb, self.prompt_class, self.num_classes)

    def word_weights(self, absolute: bool = False) -> dict[str, list[list[tuple[str, float]]]]:
        """Per class, per CuPL prompt: ``(word, weight)`` with weights summing to 1 within the prompt.

        A word's weight is the mean of ``exp(log_w)`` over its BPE pieces, so that all words start
        equal (1 / number of words) before training. ``absolute``: that mean itself, not normalized
        (1 = unchanged by training), for views that tell "this word went up" from "the others went down".
        """
        log_w = self.effective_log_weights().detach().float().cpu()  # [P, L']
        out: dict[str, list[list[tuple[str, float]]]] = {name: [] for name in self.classnames}
        for p, c in enumerate(self.prompt_class[: self.n_cupl].tolist()):
            words = token_words(self.frozen.cupl_tokens[p], self.tokenizer)
            raw = [float(log_w[p, pos].exp().mean()) for _, pos in words]
            total = 1.0 if absolute else (sum(raw) or 1.0)
            out[self.classnames[c]].append([(w, r / total) for (w, _), r in zip(words, raw)])
        return out


def function_word_mask(tokens: torch.Tensor, tokenizer, length: int) -> torch.Tensor:
    """``[P, length]`` bool: True at the BPE pieces of function words and punctuation of each prompt.

    Args:
        tokens: Tokenized prompts ``[P, 77]`` (``[SOS, x_1 … x_N, EOT, 0 …]``).
        tokenizer: Their tokenizer.
        length: Width of the mask (positions beyond it are dropped).
    """
    mask = torch.zeros(tokens.shape[0], length, dtype=torch.bool)
    for p in range(tokens.shape[0]):
        for word, positions in token_words(tokens[p], tokenizer):
            if is_function_word(word):
                mask[p, [i for i in positions if i < length]] = True
    return mask
