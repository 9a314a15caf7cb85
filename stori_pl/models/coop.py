"""CoOp (Zhou et al., IJCV 2022): learned context vectors in front of the class name; CLIP stays frozen.

Follows ``KaiyangZhou/CoOp``, ``trainers/coop.py`` (``PromptLearner``, ``TextEncoder``, ``CustomCLIP``) with
the configs ``configs/trainers/CoOp/vit_b16*.yaml`` and Dassl's optimizer defaults:

- prompt ``[SOS] [V]_1 … [V]_M [CLASS] . [EOT]`` with ``M = 16`` context vectors shared by all classes
  (``CSC=False``), class token at the end; the vectors start as ``N(0, 0.02)`` or, with ``ctx_init``, as the
  token embeddings of a phrase: then ``M`` = its number of *words* (trainers/coop.py l. 74–79:
  ``n_ctx = len(ctx_init.split(" "))``, the first ``M`` BPE tokens become the context and any further tokens
  of the phrase stay fixed in the suffix); ``ctx_init_count="tokens"`` (a stori-pl option) makes every
  token of the phrase a context vector;
- text feature = ``ln_final`` of the EOT output ``@ text_projection``; logits ``logit_scale.exp() · cos``;
- SGD lr 0.002, momentum 0.9, weight decay 5e-4, batch 32, cosine per epoch after one warm-up epoch at a
  constant 1e-5 (:func:`stori_pl.models.schedules.dassl_scheduler`); epochs 50 (1 shot, and ImageNet),
  100 (2, 4 shots), 200 (8, 16 shots).

Departure: it trains on cached image features (augmented views from the cache stand in for CoOp's per-step
random crops). The text tower runs through :class:`~stori_pl.text.encoder.WeightedTextEncoder` (no weights),
so prompts are cut after their EOT and grouped in length buckets instead of running 77 positions.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stori_pl.models.base import ClipClassifier
from stori_pl.models.schedules import dassl_scheduler
from stori_pl.text.clip import text_tower, tokenize
from stori_pl.text.encoder import WeightedTextEncoder


class CoOp(ClipClassifier):
    """CoOp: ``n_ctx`` learned context vectors shared by all classes, class name at the end.

    Args:
        clip_model: open_clip architecture name.
        pretrained: open_clip tag, local checkpoint file, ``"builtin"`` or None (random init).
        n_ctx: Number of context vectors (official: 16); ignored when ``ctx_init`` is given.
        ctx_init: Initialize the context from this phrase's token embeddings (e.g. ``"a photo of a"``);
            None = random ``N(0, 0.02)``.
        lr: SGD learning rate (official: 0.002).
        momentum: SGD momentum (Dassl: 0.9).
        weight_decay: SGD weight decay (Dassl: 5e-4).
        warmup_epochs: Epochs at the constant ``warmup_lr`` before the cosine (official: 1).
        warmup_lr: The warm-up learning rate (official: 1e-5).
        ctx_init_count: ``"words"`` (``M`` = the phrase's word count, the official) or ``"tokens"`` (its BPE
            token count: all of the phrase is learned).
        prompts: ``PromptSet.to_dict()``; None → from the datamodule (only class names are used).
    """

    supports_new_classes = True  # the context is shared by all classes (CoCoOp base-to-novel)

    def __init__(
        self,
        clip_model: str = "ViT-B-16",
        pretrained: str | None = "openai",
        n_ctx: int = 16,
        ctx_init: str | None = None,
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        ctx_init_count: Literal["words", "tokens"] = "words",
        prompts: dict | None = None,
    ):
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        if ctx_init_count not in ("words", "tokens"):
            raise ValueError(f"ctx_init_count must be words or tokens, got {ctx_init_count!r}")
        super().__init__()
        self.save_hyperparameters(ignore=["prompts"])  # the checkpoint keeps the prompts in its "stori" entry
        self._finish_init(prompts)

    @property
    def method_name(self) -> str:
        return "CoOp"

    def context_init(self) -> tuple[torch.Tensor, str]:
        """Initial context vectors ``[M, W]`` and the text standing in for them in the prompt."""
        embedding = text_tower(self.clip).token_embedding
        if self.hparams.ctx_init:
            phrase = self.hparams.ctx_init.replace("_", " ")
            tokens = tokenize([phrase], self.tokenizer).to(self.device)  # [1, 77]
            encoder = WeightedTextEncoder(self.clip, start_block=1)
            n_tokens, lead = int(encoder.token_mask(tokens).sum()), encoder.n_leading(tokens)  # after SOS (if any)
            n = len(phrase.split(" ")) if self.hparams.get("ctx_init_count", "tokens") == "words" else n_tokens
            with torch.no_grad():
                return embedding(tokens)[0, lead : lead + n].float().clone(), phrase
        ctx = torch.empty(self.hparams.n_ctx, embedding.weight.shape[1], device=self.device)
        nn.init.normal_(ctx, std=0.02)
        return ctx, " ".join(["X"] * self.hparams.n_ctx)

    def _build_classifier(self, prompt_set) -> None:
        ctx, placeholder = self.context_init()
        texts = [f"{placeholder} {name.replace('_', ' ')}." for name in prompt_set.classnames]
        encoder = WeightedTextEncoder(self.clip, start_block=1)
        tokens = tokenize(texts, self.tokenizer).to(self.device)  # [C, 77]
        tokens = tokens[:, : encoder.sequence_length(tokens)]  # [C, L'] nothing after EOT matters (causal mask)
        lead = encoder.n_leading(tokens)  # SOS (CLIP) or nothing (SigLIP)
        with torch.no_grad():
            emb = encoder.tower.token_embedding(tokens).float()  # [C, L', W]
        self.frozen.encoder = encoder
        self.ctx = nn.Parameter(ctx)  # [M, W]
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", emb[:, :lead], persistent=False)  # [C, 1, W] SOS ([C, 0, W]: none)
        self.register_buffer("token_suffix", emb[:, lead + len(ctx) :], persistent=False)  # [C, *, W] class . EOT

    @property
    def encoder(self) -> WeightedTextEncoder:
        """The text encoder the prompts run through (start block 1, no weights)."""
        self._check_ready()
        return self.frozen.encoder

    def prompt_embeddings(self) -> torch.Tensor:
        """Token embeddings of the class prompts ``[C, L', W]``: ``[SOS] ctx [CLASS] . [EOT]``."""
        ctx = self.ctx.to(self.token_prefix.dtype).unsqueeze(0).expand(len(self.tokens), -1, -1)  # [C, M, W]
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)

    def class_embeddings(self) -> torch.Tensor:
        """Class embeddings ``[C, D]`` (L2-normalized), differentiable w.r.t. ``ctx``."""
        emb = self.encoder(self.tokens, token_embeddings=self.prompt_embeddings())  # [C, D]
        return F.normalize(emb.float(), dim=-1)

    def configure_optimizers(self) -> dict:
        """SGD with momentum; Dassl's per-epoch constant warm-up + cosine schedule (see module docstring)."""
        self._check_ready()
        hp = self.hparams
        opt = torch.optim.SGD([self.ctx], lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        sched = dassl_scheduler(opt, max(1, int(self.trainer.max_epochs or 1)), hp.warmup_epochs, hp.warmup_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
