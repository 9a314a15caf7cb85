"""Shared machinery of the CLIP classifiers: frozen CLIP, prompt set, metrics, checkpoints, inference.

A classifier is a set of class embeddings ``W [C, D]`` (L2-normalized) built from text prompts;
``logits = logit_scale.exp() · normalize(img) @ Wᵀ``. Subclasses say how ``W`` is made
(:class:`~stori_pl.models.StoriClassifier`, :class:`~stori_pl.models.ZeroShotCLIP`,
:class:`~stori_pl.models.TaskRes`) and what is trained.

The frozen CLIP and the cached prompt prefix states are deliberately *not* registered submodules:
they never enter a checkpoint, DDP never broadcasts them, the model summary counts only what is
trained, and ``.to(device)`` still moves them (see :meth:`ClipClassifier._apply`). A checkpoint holds
the trained tensors plus a ``"stori"`` entry (stori-pl version, model name, CLIP name + pretrained
tag, prompts) — enough for ``load_from_checkpoint`` without any data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from stori_pl.data.image_io import to_rgb
from stori_pl.models.checkpoint import CheckpointLoading
from stori_pl.models.checkpoint_entry import (
    CHECKPOINT_FORMAT,
    check_stori_entry,
    first_difference,
    stori_entry,
)
from stori_pl.data.containers import PromptSet
from stori_pl.models.export import export_classifier
from stori_pl.text.clip import load_clip, tokenize

__all__ = ["CHECKPOINT_FORMAT", "TOP5_MIN_CLASSES", "ClipClassifier", "class_mean", "encode_plain_prompts"]

TOP5_MIN_CLASSES = 100  # report top-5 accuracy too from this many classes on (ImageNet)


def class_mean(emb: torch.Tensor, prompt_class: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``normalize(mean over a class's prompts of normalize(emb)))``: ``[P, D] -> [C, D]``."""
    emb = F.normalize(emb, dim=-1)  # [P, D]
    summed = emb.new_zeros(n_classes, emb.shape[1]).index_add(0, prompt_class, emb)  # [C, D]
    return F.normalize(summed, dim=-1)  # normalize(mean) == normalize(sum)


@dataclass
class FrozenParts:
    """What a classifier uses but neither owns nor trains: a plain object, so none of it becomes a submodule
    (no CLIP weights in the state dict or checkpoint; the CLIP is shared through ``load_clip``'s memo)."""

    clip: nn.Module | None = None  # the frozen open_clip model
    preprocess: Any = None  # its eval image transform
    tokenizer: Any = None
    encoder: Any = None  # WeightedTextEncoder over the CLIP (SToRI, CoOp, IntCoOp)
    prepared: Any = None  # SToRI's PreparedPrompts (follows .to() with the CLIP)
    cupl_tokens: torch.Tensor | None = None  # SToRI's tokenized CuPL prompts [P, 77] (for word weights)


class ClipClassifier(CheckpointLoading, L.LightningModule):
    """Base class: a text-prompt classifier on top of a frozen open_clip model.

    Subclasses take ``clip_model``, ``pretrained`` and ``prompts`` (``PromptSet.to_dict()`` or None:
    then the datamodule's ``prompt_set()`` at the first fit/test, or the checkpoint's), call
    ``super().__init__()`` and ``self.save_hyperparameters(ignore=["prompts"])`` first and end their
    ``__init__`` with ``self._finish_init(prompts)``. What they use but neither own nor train (the frozen CLIP,
    the prepared prompts) lives in :attr:`frozen`, a :class:`FrozenParts`, out of the submodules and state dict.
    """

    # True where the trained state is shared by all classes (CoOp's context, zero-shot: none), so the model can
    # classify classes it was not trained on (CoCoOp's base-to-novel protocol, ``--data.subsample_classes new``)
    supports_new_classes: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.prompt_set = None  # PromptSet once built
        self.frozen = FrozenParts()
        self._class_cache: tuple[Any, torch.Tensor] | None = None

    def _finish_init(self, prompts: Any) -> None:
        """The shared end of every subclass ``__init__`` (its last line): build the classifier when ``prompts``
        are given."""
        if prompts is not None:
            self.build(prompts)

    @property
    def method_name(self) -> str:
        """Row label of this method in results tables."""
        return type(self).__name__

    # ------------------------------------------------------------------------------------ building
    @property
    def classnames(self) -> list[str]:
        """Class names, in label order."""
        self._check_ready()
        return list(self.prompt_set.classnames)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classnames)

    @property
    def clip(self) -> nn.Module:
        """The frozen open_clip model (shared with the datamodule through ``load_clip``'s memo)."""
        self._check_ready()
        return self.frozen.clip

    @property
    def tokenizer(self):
        """The CLIP's tokenizer."""
        self._check_ready()
        return self.frozen.tokenizer

    @property
    def preprocess(self):
        """The CLIP's eval image transform."""
        self._check_ready()
        return self.frozen.preprocess

    def build(self, prompts: Any) -> None:
        """Load the CLIP and prepare the classifier for a prompt set (dict or ``PromptSet``)."""
        ps = prompts if isinstance(prompts, PromptSet) else PromptSet.from_dict(prompts)
        if not ps.classnames:
            raise ValueError("the prompt set has no classes")
        model, preprocess, tokenizer = load_clip(self.hparams.clip_model, self.hparams.pretrained)
        model.to(self.device)
        self.frozen.clip, self.frozen.preprocess, self.frozen.tokenizer = model, preprocess, tokenizer
        self.prompt_set = ps
        self._class_cache = None
        self.metrics = nn.ModuleDict({f"{s}_": self._make_metrics(s) for s in ("train", "val", "test")})
        self._build_classifier(ps)

    def _build_classifier(self, prompt_set) -> None:
        """Subclasses: create the trained tensors and cached text states for ``prompt_set``."""
        raise NotImplementedError

    def _make_metrics(self, stage: str) -> MetricCollection:
        c = self.num_classes
        metrics = {"acc": MulticlassAccuracy(num_classes=c, average="micro")}
        if c >= TOP5_MIN_CLASSES and stage != "train":
            metrics["acc_top5"] = MulticlassAccuracy(num_classes=c, top_k=5, average="micro")
        return MetricCollection(metrics, prefix=f"{stage}/")

    def _hidden_modules(self) -> list[nn.Module]:
        """Unregistered modules that must follow ``.to()`` (CLIP, prepared prompt states)."""
        return [m for m in (self.frozen.clip, self.frozen.prepared) if m is not None]

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for module in self._hidden_modules():
            module._apply(fn, *args, **kwargs)
        self._class_cache = None
        return self

    def setup(self, stage: str) -> None:
        """Build from the datamodule's prompt set (a checkpoint restored next replaces it if it differs); a model
        that :attr:`supports_new_classes` switches to the datamodule's classes, keeping what it learned."""
        dm = getattr(self.trainer, "datamodule", None)
        if getattr(dm, "subsample_classes", "all") == "new" and not self.supports_new_classes:
            raise ValueError(self.new_classes_error())
        if self.prompt_set is None and dm is not None and hasattr(dm, "prompt_set"):
            self.build(dm.prompt_set())
        names = getattr(dm, "classnames", None)
        if self.prompt_set is not None and names is not None and hasattr(dm, "prompt_set") and list(names) != self.classnames:
            if self.supports_new_classes:
                self.use_classes(dm.prompt_set())
                return
            raise ValueError(
                f"the datamodule's {len(names)} classes do not match the model's {self.num_classes} classes "
                f"({first_difference(list(names), self.classnames)}); the labels would be wrong"
            )

    def new_classes_error(self) -> str:
        """The message for a model that cannot classify classes it was not trained on."""
        return (f"{self.method_name} learns per-class parameters and cannot classify new classes; use "
                "--data.subsample_classes base or all (CoOp and zero-shot CLIP handle new classes)")

    def use_classes(self, prompts: Any) -> None:
        """Rebuild the classifier for another class set (dict or ``PromptSet``), keeping the trained tensors
        (base-to-novel: a CoOp context learned on the base classes, applied to the new ones).

        Raises:
            ValueError: The model learns per-class parameters (:attr:`supports_new_classes` is False).
        """
        if not self.supports_new_classes:
            raise ValueError(self.new_classes_error())
        trained = {k: v.detach().clone() for k, v in self.state_dict().items()}
        self.build(prompts)
        self.load_state_dict(trained, strict=False)

    def at_last_fit_validation(self) -> bool:
        """True during the validation of a fit's last epoch (not the sanity check, not ``stori validate``):
        where models fitted in closed form (Tip-Adapter's search, the linear probe) do so, before last.ckpt."""
        trainer = self.trainer
        return (not trainer.sanity_checking and trainer.state.fn == "fit"
                and trainer.current_epoch >= trainer.max_epochs - 1)

    def _check_ready(self) -> None:
        """The one check that the model has its prompts (a ValueError ``stori`` prints as one line)."""
        if self.prompt_set is None:
            raise ValueError(
                f"{type(self).__name__} has no prompts yet: pass prompts=..., use a datamodule with prompt_set() "
                "(e.g. --data DTD), or load a checkpoint (--ckpt_path)"
            )

    def on_fit_start(self) -> None:
        self._check_ready()

    def on_test_start(self) -> None:
        self._check_ready()

    def on_validation_start(self) -> None:
        self._check_ready()

    def on_predict_start(self) -> None:
        self._check_ready()

    # ----------------------------------------------------------------------------------- classifier
    def class_embeddings(self) -> torch.Tensor:
        """Current class embeddings ``[C, D]`` (L2-normalized), differentiable where trained."""
        raise NotImplementedError

    def eval_class_embeddings(self) -> torch.Tensor:
        """Class embeddings ``[C, D]`` (L2-normalized) without grad, recomputed only after the trained tensors
        change (inference, export); do not modify the returned tensor in place."""
        key = (self.device, tuple(p._version for p in self.parameters()), tuple(p.data_ptr() for p in self.parameters()))
        if self._class_cache is None or self._class_cache[0] != key:
            with torch.no_grad():
                self._class_cache = (key, self.class_embeddings().detach().clone())
        return self._class_cache[1]

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's ``logit_scale.exp()`` (a frozen scalar)."""
        return self.clip.logit_scale.detach().exp().to(self.device)

    def forward(self, features: torch.Tensor, class_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N, C]`` for image features ``[N, D]``."""
        if class_embeddings is None:
            class_embeddings = self.class_embeddings() if torch.is_grad_enabled() else self.eval_class_embeddings()
        features = F.normalize(features.to(class_embeddings), dim=-1)  # [N, D]
        return self.logit_scale * features @ class_embeddings.T  # [N, C]

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, C]`` for image features ``[N, D]`` (normalized or not)."""
        with torch.no_grad():
            return self(features.to(self.device), self.eval_class_embeddings()).softmax(dim=-1)

    def encode_images(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """L2-normalized CLIP image features ``[N, D]`` of PIL images or a preprocessed batch ``[N, 3, H, W]``."""
        if isinstance(images, torch.Tensor):
            batch = images if images.ndim == 4 else images[None]
        else:
            images = [images] if not isinstance(images, Sequence) else images
            batch = torch.stack([self.preprocess(to_rgb(im)) for im in images])  # [N, 3, H, W]
        out = []
        with torch.no_grad():
            for chunk in batch.split(batch_size):
                out.append(F.normalize(self.clip.encode_image(chunk.to(self.device)).float(), dim=-1))
        return torch.cat(out)  # [N, D]

    def classify(self, images: Any) -> torch.Tensor:
        """Class probabilities ``[N, C]`` for PIL images (one or a list) or a preprocessed tensor batch."""
        return self.classify_features(self.encode_images(images))

    def export_classifier(self, path: str) -> None:
        """Write class embeddings, class names and logit scale to a safetensors file that plain
        open_clip users can apply without stori-pl (see :func:`stori_pl.models.export.export_classifier`)."""
        export_classifier(self, path)

    # --------------------------------------------------------------------------------- Lightning loop
    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch["features"])  # [B, C]
        loss = F.cross_entropy(logits, batch["label"])
        self.metrics[f"{stage}_"](logits, batch["label"])  # forward: update + batch value
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", sync_dist=stage != "train")
        self.log_dict(self.metrics[f"{stage}_"], prog_bar=stage != "test")
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        self._stop_if_not_finite(loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = {k: v for k, v in batch.items() if k != "features"}
        out["probs"] = self(batch["features"]).softmax(dim=-1)  # [B, C]
        return out

    def _stop_if_not_finite(self, loss: torch.Tensor) -> None:
        bad = self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False)
        if bad:
            lrs = [g["lr"] for opt in self.trainer.optimizers for g in opt.param_groups]
            lr = ", ".join(f"{x:.3g}" for x in lrs) or "?"
            raise FloatingPointError(
                f"loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}) with lr {lr}; "
                "training stopped. Lower the learning rate (--model.lr) and try again."
            )

    def configure_optimizers(self) -> dict:
        """Adam on the trained tensors with a cosine schedule over all optimizer steps (stepped per step)."""
        self._check_ready()
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError(f"{type(self).__name__} has nothing to train; use `stori test` / `stori validate`")
        opt = torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.trainer.estimated_stepping_batches
        total = max(1, int(total)) if math.isfinite(total) else 1
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def image_class_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """Per image, the class embeddings it is classified with: ``[N, D] -> [N, C, D]`` (L2-normalized). The
        same :meth:`eval_class_embeddings` for every image, except for models whose prompts depend on the image."""
        return self.eval_class_embeddings().unsqueeze(0).expand(len(features), -1, -1)

    # ----------------------------------------------------------------------------------- checkpoints
    def checkpoint_info(self) -> dict:
        """What the checkpoint's ``"stori"`` entry holds (besides the trained tensors); see
        :func:`stori_pl.models.checkpoint_entry.stori_entry`."""
        self._check_ready()
        return stori_entry(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["stori"] = self.checkpoint_info()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_stori_entry(self, checkpoint)  # the checks and messages: stori_pl.models.checkpoint_entry


def encode_plain_prompts(
    clip: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 256, normalize: bool = True
) -> torch.Tensor:
    """``encode_text`` of plain (unweighted) prompts, L2-normalized unless ``normalize=False``, in batches, without grad.

    Args:
        clip: open_clip model.
        tokenizer: Its tokenizer (prompts cut to the context are warned about, see
            :func:`~stori_pl.text.clip.tokenize`).
        texts: ``N`` prompts.
        batch_size: Prompts per ``encode_text`` call.
        normalize: L2-normalize each embedding (False: the raw text-encoder outputs, as TaskRes averages them).

    Returns:
        ``[N, D]`` float32 on the CLIP's device.
    """
    device = next(clip.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            tokens = tokenize(texts[i : i + batch_size], tokenizer).to(device)  # [b, L]
            emb = clip.encode_text(tokens).float()
            out.append(F.normalize(emb, dim=-1) if normalize else emb)
    return torch.cat(out)
