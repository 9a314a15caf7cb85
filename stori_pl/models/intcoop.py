"""IntCoOp (Ghosal et al., "IntCoOp: Interpretability-Aware Vision-Language Prompt Tuning", EMNLP 2024,
arXiv 2406.13683): CoOp whose prompt also holds an attribute word predicted from the image.

Per image ``I`` and class ``c`` the prompt is ``[SOS] ctx(I)_1 … ctx(I)_M  A(I)  [CLASS] . [EOT]``:

- ``A`` (:class:`~stori_pl.models.intcoop_parts.AttributeExtractor`) maps the CLIP image embedding to one soft
  token, trained towards the token embedding of the image's attribute label (BLIP-2 in the paper; any
  labeller of ``FewShotDataModule(attribute_labels=...)`` here). At test time ``A(I)`` replaces the labels,
  so new classes and unlabelled images work.
- ``ctx(I)`` (:class:`~stori_pl.models.intcoop_parts.InstanceContext`): the shared context vectors conditioned
  on the image by multi-head attention (queries = context vectors, keys/values = ``kv_tokens`` tokens made from
  the image embedding; see that class for why one key would be degenerate).
- Loss ``CE + λ1·L_attr + λ2·L_reg``: ``L_attr`` = squared L2 between ``A(I)`` and the label's embedding
  divided by the labels' mean squared norm; ``L_reg = 1 − cos`` between the learned prompt's text embedding
  for the image's true class and the hand-crafted ``"a photo of a {attribute} {class}."`` (encoded once per
  (word, class) pair, without grad). Logged as ``train/loss_ce``, ``train/loss_attr``, ``train/loss_reg``.

Instance prompts cost ``B × C`` text encodings per step. They run through the CoOp encoder path (EOT cut), the
classes sorted by prompt length and taken ``class_chunk`` at a time; while training with more than one chunk,
each chunk is gradient-checkpointed, so memory is one chunk's graph.

Choices the paper's text does not fix (constructor arguments; the defaults are ours): ``n_ctx = 4`` initialized
from ``"a photo of a"`` (CoCoOp's base-to-novel setting, so the prompt starts as the hand-crafted one);
``heads = 4``, ``kv_tokens = 4``; λ1 = 1, λ2 = 1 (relative-scale losses, checked on the toy world); CoOp's
optimizer and Dassl schedule (SGD 0.002, warm-up + cosine) for all trained parts; ``A`` is trained jointly by
all three losses (the CE gradient reaches it); ``L_reg`` uses the true class only. Visual prompts
(``visual_prompts = N``, :mod:`stori_pl.models.visual_prompts`) need images (``return_images: true`` in the
datamodule); the default (0) trains on cached features.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stori_pl.data.image_io import to_rgb
from stori_pl.models.base import encode_plain_prompts
from stori_pl.models.coop import CoOp
from stori_pl.models.intcoop_parts import (
    AttributeExtractor,
    InstanceContext,
    attribute_loss,
    nearest_words,
    word_embeddings,
)
from stori_pl.models.visual_prompts import VisualPrompts
from stori_pl.text.clip import text_tower, tokenize
from stori_pl.text.encoder import WeightedTextEncoder
from stori_pl.models.schedules import dassl_scheduler

HANDCRAFTED = "a photo of a {attribute} {classname}."


class IntCoOp(CoOp):
    """IntCoOp: attribute-conditioned instance prompts on a frozen CLIP (see the module docstring).

    Args:
        clip_model: open_clip architecture name.
        pretrained: open_clip tag, local checkpoint file, ``"builtin"`` or None (random init).
        n_ctx: Context vectors (ignored when ``ctx_init`` is given).
        ctx_init: Initialize the context from this phrase (default ``"a photo of a"``; None = ``N(0, 0.02)``).
        heads: Attention heads of the context conditioning (must divide the text width).
        kv_tokens: Key/value tokens made from the image embedding (>= 2).
        attr_hidden: Hidden width of the attribute extractor (None: the image-embedding width).
        lambda_attr: λ1, weight of the attribute loss.
        lambda_reg: λ2, weight of the hand-crafted-prompt regularizer.
        class_chunk: Classes encoded per chunk (memory bound: ``B × class_chunk`` prompts at a time).
        visual_prompts: Learnable visual prompt tokens N (0 = off: train on cached features).
        visual_prompt_depth: Vision blocks that get fresh prompt tokens (1 = shallow VPT).
        attribute_words: The attribute vocabulary (None: the datamodule's ``attribute_words`` at fit).
        lr: SGD learning rate (CoOp's 0.002).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        warmup_epochs: Constant warm-up epochs before the cosine.
        warmup_lr: The warm-up learning rate.
        prompts: ``PromptSet.to_dict()``; None → from the datamodule.
    """

    supports_new_classes = True
    ATTRIBUTE_TABLE_ROWS = 8  # validation images in the per-epoch TensorBoard table

    def __init__(
        self,
        clip_model: str = "ViT-B-16",
        pretrained: str | None = "openai",
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        heads: int = 4,
        kv_tokens: int = 4,
        attr_hidden: int | None = None,
        lambda_attr: float = 1.0,
        lambda_reg: float = 1.0,
        class_chunk: int = 64,
        visual_prompts: int = 0,
        visual_prompt_depth: int = 1,
        attribute_words: list[str] | None = None,
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        prompts: dict | None = None,
    ):
        if n_ctx < 1 or class_chunk < 1 or visual_prompts < 0:
            raise ValueError(f"IntCoOp needs n_ctx >= 1, class_chunk >= 1 and visual_prompts >= 0, got "
                             f"{n_ctx}, {class_chunk}, {visual_prompts}")
        super(CoOp, self).__init__()  # ClipClassifier's: this signature's arguments are the hparams
        assert __class__ is IntCoOp  # (the __class__ cell is how Lightning finds the signature)
        self.save_hyperparameters(ignore=["prompts"])  # the checkpoint keeps the prompts in its "stori" entry
        self._handcrafted: dict[tuple[str, str], torch.Tensor] = {}
        self._finish_init(prompts)

    @property
    def method_name(self) -> str:
        return "IntCoOp"

    @property
    def attribute_words(self) -> list[str]:
        """The attribute vocabulary ``A`` is trained towards (empty before fit when not given)."""
        return list(self.hparams.get("attribute_words") or [])

    # ------------------------------------------------------------------------------------ building
    def _build_classifier(self, prompt_set) -> None:
        """Class tokens for ``prompt_set``; the trained parts are created once and kept when the classes change
        (base-to-novel: a model trained on base classes is rebuilt for the new ones)."""
        ctx, placeholder = self.context_init()
        encoder = WeightedTextEncoder(self.clip, start_block=1)
        texts = [f"{placeholder} X {name.replace('_', ' ')}." for name in prompt_set.classnames]
        tokens = tokenize(texts, self.tokenizer).to(self.device)  # [C, 77]
        eot = encoder.eot_positions(tokens)  # [C]
        tokens = tokens[:, : encoder.sequence_length(tokens)]  # [C, L'] (all positions in a bidirectional tower)
        lead = encoder.n_leading(tokens)  # SOS (CLIP) or nothing (SigLIP)
        with torch.no_grad():
            emb = encoder.tower.token_embedding(tokens).float()  # [C, L', W]
        self.frozen.encoder = encoder
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("class_order", torch.argsort(eot, stable=True), persistent=False)  # by length
        self.register_buffer("token_prefix", emb[:, :lead], persistent=False)  # [C, 1, W] SOS ([C, 0, W]: none)
        self.register_buffer("token_suffix", emb[:, lead + 1 + len(ctx):], persistent=False)  # [C, *, W] class . EOT
        self._handcrafted = {}
        self._set_word_table()
        if "ctx" not in self._parameters:
            self._create_trained_parts(ctx)

    def _set_word_table(self) -> None:
        words = self.attribute_words
        tower = text_tower(self.clip)
        mask = WeightedTextEncoder(self.clip, start_block=1).token_mask
        table = (word_embeddings(words, tower.token_embedding, self.tokenizer, mask) if words
                 else torch.zeros(0, tower.token_embedding.weight.shape[1], device=self.device))
        self.register_buffer("word_table", table, persistent=False)  # [V, W]

    def _create_trained_parts(self, ctx: torch.Tensor) -> None:
        hp = self.hparams
        width = ctx.shape[1]
        feature_dim = text_tower(self.clip).project(torch.zeros(1, width, device=self.device)).shape[-1]
        init = self.word_table.mean(0) if len(self.word_table) else None
        self.ctx = nn.Parameter(ctx)  # [M, W]
        self.extractor = AttributeExtractor(feature_dim, width, hp.attr_hidden, init).to(self.device)
        self.conditioner = InstanceContext(width, feature_dim, hp.heads, hp.kv_tokens).to(self.device)
        if hp.visual_prompts:
            visual_width = self.clip.visual.conv1.weight.shape[0]
            self.visual_prompt = VisualPrompts(visual_width, hp.visual_prompts, hp.visual_prompt_depth).to(self.device)

    def set_attribute_words(self, words: list[str]) -> None:
        """Adopt the datamodule's attribute vocabulary (before training; the extractor's start follows it)."""
        self.hparams.attribute_words = list(words)
        if self.prompt_set is not None:
            self._set_word_table()
            if len(self.word_table) and self.global_step == 0:
                with torch.no_grad():
                    self.extractor.net[2].bias.copy_(self.word_table.mean(0))

    # ------------------------------------------------------------------------------------ the model
    def class_embeddings(self) -> torch.Tensor:
        raise ValueError("IntCoOp's class embeddings depend on each image (instance-conditional prompts); "
                         "use model(features) for logits. It cannot be exported as a fixed classifier.")

    def image_features(self, batch: dict) -> torch.Tensor:
        """The batch's CLIP image embeddings ``[B, D]``: cached features, or the images through the visual
        prompts."""
        if not self.hparams.visual_prompts:
            return batch["features"]
        if "image" not in batch:
            raise ValueError(f"IntCoOp(visual_prompts={self.hparams.visual_prompts}) reads images, but the batch "
                             "has cached features only: set `return_images: true` in the config's data.init_args "
                             "(or visual_prompts: 0)")
        return self.visual_prompt.encode(self.clip.visual, batch["image"])

    def prompt_parts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ctx(I) [B, M, W]`` and ``A(I) [B, W]`` of image embeddings ``[B, D]``."""
        return self.conditioner(self.ctx, features), self.extractor(features)

    def instance_text(self, ctx: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        """Normalized text embeddings of every (image, class) prompt: ``[B, M, W], [B, W] -> [B, C, D]``."""
        chunks = self.class_order.split(self.hparams.class_chunk)
        train = len(chunks) > 1 and torch.is_grad_enabled() and (ctx.requires_grad or attr.requires_grad)
        parts = []
        for index in chunks:
            if train:
                parts.append(checkpoint(self._encode_chunk, index, ctx, attr, use_reentrant=False))
            else:
                parts.append(self._encode_chunk(index, ctx, attr))
        return torch.cat(parts, dim=1)[:, torch.argsort(self.class_order)]  # [B, C, D] in label order

    def image_class_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """The prompts conditioned on each image, encoded: ``[N, D] -> [N, C, D]`` (:meth:`instance_text`).

        Raises:
            ValueError: With visual prompts the image embedding is not the plain image tower's (what an SAE of
                the image tower reads), so components of ``features`` cannot be attributed through these prompts.
        """
        if self.hparams.get("visual_prompts"):
            raise ValueError(f"{type(self).__name__}(visual_prompts={self.hparams.visual_prompts}) changes "
                             "the image tower the SAE reads: its image components cannot be attributed")
        return self.instance_text(*self.prompt_parts(features.to(self.device)))

    def _encode_chunk(self, index: torch.Tensor, ctx: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        b, c, m = len(ctx), len(index), ctx.shape[1]
        n = self.encoder.sequence_length(self.tokens[index])
        width, lead = ctx.shape[-1], self.token_prefix.shape[1]
        pre = self.token_prefix[index].unsqueeze(0).expand(b, c, lead, width)
        suf = self.token_suffix[index, : n - lead - 1 - m].unsqueeze(0).expand(b, c, -1, width)
        emb = torch.cat([pre, ctx.unsqueeze(1).expand(b, c, m, width).to(pre.dtype),
                         attr.view(b, 1, 1, width).expand(b, c, 1, width).to(pre.dtype), suf], dim=2)
        tokens = self.tokens[index, :n].unsqueeze(0).expand(b, c, n).reshape(b * c, n)
        out = self.encoder(tokens, token_embeddings=emb.reshape(b * c, n, width), bucket_size=b * c)  # [b*c, D]
        return F.normalize(out.float(), dim=-1).view(b, c, -1)

    def forward(self, features: torch.Tensor, class_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N, C]`` for image embeddings ``[N, D]`` (``class_embeddings`` is not used: IntCoOp's class
        embeddings are per image)."""
        features = features.to(self.device)
        text = self.instance_text(*self.prompt_parts(features))  # [N, C, D]
        return self.logit_scale * torch.einsum("nd,ncd->nc", F.normalize(features.float(), dim=-1), text)

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, C]`` for image features ``[N, D]``."""
        with torch.no_grad():
            return self(features.to(self.device)).softmax(dim=-1)

    # --------------------------------------------------------------------------------- losses and loop
    def handcrafted_text(self, words: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Normalized ``encode_text`` of ``"a photo of a {word} {class}."`` per image ``[b] -> [b, D]``, no grad;
        each (word, class) pair is encoded once and cached."""
        keys = [(self.attribute_words[w], self.classnames[c]) for w, c in zip(words.tolist(), labels.tolist())]
        missing = sorted(set(keys) - set(self._handcrafted))
        if missing:
            texts = [HANDCRAFTED.format(attribute=w, classname=c.replace("_", " ")) for w, c in missing]
            for key, emb in zip(missing, encode_plain_prompts(self.clip, self.tokenizer, texts)):
                self._handcrafted[key] = emb
        return torch.stack([self._handcrafted[k] for k in keys]).to(self.device)

    def losses(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """``(logits [B, C], {"ce", "attr", "reg"}, total)`` of one batch (labels: ``"label"``, ``"attribute"``)."""
        features = self.image_features(batch)
        ctx, attr = self.prompt_parts(features)
        text = self.instance_text(ctx, attr)  # [B, C, D]
        logits = self.logit_scale * torch.einsum("nd,ncd->nc", F.normalize(features.float(), dim=-1), text)
        labels = batch["label"]
        words = self.word_index(batch)  # [B], -1 = unlabelled
        parts = {"ce": F.cross_entropy(logits, labels), "attr": logits.new_zeros(()), "reg": logits.new_zeros(())}
        keep = words >= 0
        if bool(keep.any()):
            scale = float(self.word_table.pow(2).sum(-1).mean())
            parts["attr"] = attribute_loss(attr, self.word_table, words, scale)
            learned = text[torch.arange(len(labels), device=labels.device), labels][keep]  # [b, D]
            parts["reg"] = (1 - (learned * self.handcrafted_text(words[keep], labels[keep])).sum(-1)).mean()
        hp = self.hparams
        return logits, parts, parts["ce"] + hp.lambda_attr * parts["attr"] + hp.lambda_reg * parts["reg"]

    def word_index(self, batch: dict) -> torch.Tensor:
        """The batch's attribute labels as indices into :attr:`attribute_words` ``[B]`` (-1: none)."""
        labels = batch["label"]
        if "attribute" not in batch or not len(self.word_table):
            return torch.full_like(labels, -1)
        index = batch["attribute"].to(labels.device)
        remap = getattr(self, "_label_map", None)  # datamodule word index -> ours, when the vocabularies differ
        if remap is not None:
            index = torch.where(index >= 0, remap.to(index.device)[index.clamp(min=0)], index)
        return index

    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        logits, parts, loss = self.losses(batch)
        self.metrics[f"{stage}_"](logits, batch["label"])
        sync = stage != "train"
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", sync_dist=sync)
        for name, value in parts.items():
            self.log(f"{stage}/loss_{name}", value, sync_dist=sync)
        self.log_dict(self.metrics[f"{stage}_"], prog_bar=stage != "test")
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if batch_idx == 0:  # a few validation images for the per-epoch attribute table
            n = self.ATTRIBUTE_TABLE_ROWS
            self._shown = (self.image_features(batch)[:n].detach(), batch["label"][:n], self.word_index(batch)[:n])

    def on_validation_epoch_end(self) -> None:
        """TensorBoard text ``val/attributes``: predicted attribute words of the first validation images."""
        shown = getattr(self, "_shown", None)
        experiment = getattr(getattr(self, "logger", None), "experiment", None)
        if shown is None or not hasattr(experiment, "add_text") or self.trainer.sanity_checking:
            return
        experiment.add_text("val/attributes", self.attribute_table(*shown), global_step=self.current_epoch)

    def attribute_table(self, features: torch.Tensor, labels: torch.Tensor, words: torch.Tensor) -> str:
        """Markdown table of predicted attributes ``A(f(I))`` (nearest label word by cosine) of image embeddings
        ``[N, D]`` with their class labels ``[N]`` and attribute labels ``[N]`` (-1: none)."""
        rows = ["| image | class | label | predicted | cosine |", "|---|---|---|---|---|"]
        if not len(self.word_table):
            return "(no attribute vocabulary)"
        with torch.no_grad():
            sim, index = nearest_words(self.extractor(features), self.word_table)
        for i in range(len(features)):
            w = int(words[i])
            label = self.attribute_words[w] if w >= 0 else "—"
            rows.append(f"| {i} | {self.classnames[int(labels[i])]} | {label} | "
                        f"{self.attribute_words[int(index[i, 0])]} | {float(sim[i, 0]):.3f} |")
        return "\n".join(rows)

    def encode_images(self, images, batch_size: int = 64) -> torch.Tensor:
        """L2-normalized image embeddings ``[N, D]`` (through the visual prompts when the model has them)."""
        if not self.hparams.visual_prompts:
            return super().encode_images(images, batch_size)
        if not isinstance(images, torch.Tensor):
            images = [images] if not isinstance(images, (list, tuple)) else images
            images = torch.stack([self.preprocess(to_rgb(im)) for im in images])  # [N, 3, H, W]
        images = images if images.ndim == 4 else images[None]
        with torch.no_grad():
            return torch.cat([F.normalize(self.visual_prompt.encode(self.clip.visual, chunk).float(), dim=-1)
                              for chunk in images.split(batch_size)])

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = {k: v for k, v in batch.items() if k not in ("features", "image")}
        out["probs"] = self(self.image_features(batch)).softmax(dim=-1)  # [B, C]
        return out

    def setup(self, stage: str) -> None:
        """Take the datamodule's attribute vocabulary (when the model has none) and map its indices to ours."""
        dm = getattr(self.trainer, "datamodule", None)
        words = list(getattr(dm, "attribute_words", None) or [])
        if words and not self.attribute_words:
            self.set_attribute_words(words)
        if stage == "fit" and not self.attribute_words:
            warnings.warn("IntCoOp without attribute labels: set data.init_args.attribute_labels (toy, clip, file, "
                          "blip2 or a label file); until then A is trained by the classification loss only",
                          stacklevel=2)
        if self.hparams.visual_prompts and dm is not None and not getattr(dm, "return_images", False):
            raise ValueError(f"IntCoOp(visual_prompts={self.hparams.visual_prompts}) trains on images: set "
                             f"`return_images: true` in the config's data.init_args for {type(dm).__name__}")
        super().setup(stage)  # new classes (base-to-novel): the same trained parts, the datamodule's names
        ours = {w: i for i, w in enumerate(self.attribute_words)}
        self._label_map = torch.tensor([ours.get(w, -1) for w in words], dtype=torch.long) if words else None

    def checkpoint_info(self) -> dict:
        """The classifiers' entry plus the attribute vocabulary (what ``stori explain`` names ``A(I)`` with)."""
        return {**super().checkpoint_info(), "attribute_words": self.attribute_words}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """As the classifiers' (new class names are accepted), then the checkpoint's attribute vocabulary."""
        super().on_load_checkpoint(checkpoint)
        info = checkpoint.get("stori") or {}
        if info.get("attribute_words") and info["attribute_words"] != self.attribute_words:
            self.set_attribute_words(info["attribute_words"])

    def configure_optimizers(self) -> dict:
        """SGD + Dassl schedule (as CoOp) over every trained part."""
        self._check_ready()
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        sched = dassl_scheduler(opt, max(1, int(self.trainer.max_epochs or 1)), hp.warmup_epochs, hp.warmup_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
