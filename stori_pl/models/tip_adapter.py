"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the few-shot training features.

Follows ``gaopengcuhk/Tip-Adapter`` (``main.py``: ``run_tip_adapter``, ``run_tip_adapter_F``; ``utils.py``:
``clip_classifier``, ``build_cache_model``, ``search_hp``):

- keys = L2-normalized mean over the ``augment_epoch = 10`` augmented passes of each training image
  (``build_cache_model``, utils.py l. 46–60: no plain view), values = one-hot labels (``cache_views="augmented"``);
- ``logits = 100 · f Wᵀ + alpha · exp(−beta · (1 − f keysᵀ)) values`` with ``W`` the normalized template
  classifier, ``normalize(mean(normalize(encode_text(template(c)))))`` (``clip_classifier``, utils.py l. 18–35;
  ImageNet: its 7 templates, ``datasets/imagenet.py`` l. 177; the official code uses the constant 100);
- ``beta`` and ``alpha`` are searched over the official grid (``i · (scale − 0.1) / steps + 0.1``,
  ``steps = (200, 20)``, per-dataset scales), first best kept, on the **whole val split** (main.py l. 168–171:
  the datasets subsample only ``train``; ``search_split="val"``) — on ImageNet on **test** (main_imagenet.py
  l. 43 and l. 110: ``search_hp(..., test_features, ...)``; ``search_split="test"`` in the ImageNet configs);
- -F (``fine_tune=True``) trains the keys (the official ``Linear`` initialized with them; not renormalized)
  with AdamW lr 1e-3, eps 1e-4, cosine per step over 20 epochs at batch 256 (no ``drop_last``,
  ``datasets/utils.py`` l. 373), at the initial alpha/beta, then searches alpha/beta again. The official -F
  keeps the epoch of best *test* accuracy (main.py l. 111–126) and prints ``max(best, last)`` (l. 141);
  here the last epoch is kept unless ``select_epoch_on_test=True`` (which warns: it selects on test).

Options that depart from the official protocol (named, documented in docs/baselines.md):
``search_split="fewshot_val"`` searches on the few-shot val set (≤ 4 images per class, as CoOp samples it) —
the strict few-shot protocol, and the fair choice when comparing with methods that see no more labels than
the few shots; ``cache_views="all"`` averages the plain view too.

Departures: features come from the cache, L2-normalized per view, so keys average normalized views (the
official averages raw ``encode_image`` outputs, then normalizes; :meth:`TipAdapter.build_cache` on raw
features is exact); -F draws one random cached view per step instead of a fresh crop.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stori_pl.models.base import ClipClassifier
from stori_pl.models.baselines import text_classifier

TIP_SCALE = 100.0  # the official code's fixed logit scale of the zero-shot term
SEARCH_PARTS = {"val": "full_val", "fewshot_val": "val", "test": "test"}  # search_split -> datamodule part
TEST_SELECTION_WARNING = ("Tip-Adapter: {what} on the TEST split (the official {where}); the test accuracy it "
                          "reports is optimistic — use search_split: val or fewshot_val for a clean comparison")


def tip_logits(feats: torch.Tensor, clip_weights: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               alpha: float | torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Tip-Adapter logits ``[N, C]`` for normalized features ``[N, D]``, classifier ``[C, D]``, keys ``[K, D]``,
    one-hot values ``[K, C]``."""
    cache = torch.exp(-beta * (1 - feats @ keys.T)) @ values  # [N, C]
    return TIP_SCALE * feats @ clip_weights.T + alpha * cache


def search_grid(scale: float, steps: int) -> list[float]:
    """The official search grid: ``[i · (scale − 0.1) / steps + 0.1 for i in range(steps)]``."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


@torch.no_grad()
def search_alpha_beta(feats: torch.Tensor, labels: torch.Tensor, clip_weights: torch.Tensor, keys: torch.Tensor,
                      values: torch.Tensor, scale: Sequence[float], steps: Sequence[int]) -> tuple[float, float]:
    """``search_hp``: the (beta, alpha) of highest val accuracy, beta outer / alpha inner, first best kept."""
    betas, alphas = search_grid(scale[0], steps[0]), search_grid(scale[1], steps[1])
    affinity = feats @ keys.T  # [N, K]
    zero_shot = TIP_SCALE * feats @ clip_weights.T  # [N, C]
    alpha_t = torch.tensor(alphas, dtype=feats.dtype, device=feats.device)[:, None, None]  # [A, 1, 1]
    hits = torch.stack([
        ((zero_shot + alpha_t * (torch.exp(-beta * (1 - affinity)) @ values)).argmax(-1) == labels).sum(-1)
        for beta in betas
    ])  # [B, A] correct counts
    best = int(hits.flatten().argmax())  # the first maximum in (beta, alpha) order, as the official loop
    return betas[best // len(alphas)], alphas[best % len(alphas)]


class TipAdapter(ClipClassifier):
    """Tip-Adapter (training-free) or, with ``fine_tune``, Tip-Adapter-F.

    Args:
        clip_model: open_clip architecture name.
        pretrained: open_clip tag, local checkpoint file, ``"builtin"`` or None (random init).
        fine_tune: Train the cache keys (Tip-Adapter-F).
        init_alpha: alpha while fine-tuning (official per dataset: 1.17 ImageNet/Food101/SUN397, 2 DTD,
            3 Caltech101, 10 Flowers102).
        init_beta: beta while fine-tuning (official: 1).
        search_scale: Largest (beta, alpha) of the search (official: ImageNet (7, 3), DTD (13, 13),
            Caltech101 (12, 5), Food101 (10, 10), Flowers102 (50, 50), SUN397 (12, 10)).
        search_step: Grid sizes (official: (200, 20)).
        lr: AdamW learning rate of -F (official: 1e-3).
        eps: AdamW epsilon (official: 1e-4).
        search_split: Where alpha/beta are searched: ``"val"`` (the split's whole val part, the official
            protocol), ``"fewshot_val"`` (the few-shot val set: the strict few-shot protocol, the fair choice
            for comparisons), ``"test"`` (the official ImageNet protocol; warns: it selects on test).
        cache_views: Views averaged into a key: ``"augmented"`` (the augmented views only, the official
            ``augment_epoch`` passes) or ``"all"`` (the plain view too).
        select_epoch_on_test: -F keeps the epoch of best test accuracy (at the initial alpha/beta) before the
            search, as the official main.py; warns (selection on test). False: the last epoch.
        prompts: ``PromptSet.to_dict()``; None → from the datamodule (template prompts are used).
    """


    def __init__(
        self,
        clip_model: str = "RN50",
        pretrained: str | None = "openai",
        fine_tune: bool = False,
        init_alpha: float = 1.17,
        init_beta: float = 1.0,
        search_scale: tuple[float, float] = (7.0, 3.0),
        search_step: tuple[int, int] = (200, 20),
        lr: float = 1e-3,
        eps: float = 1e-4,
        search_split: Literal["val", "fewshot_val", "test"] = "val",
        cache_views: Literal["augmented", "all"] = "augmented",
        select_epoch_on_test: bool = False,
        prompts: dict | None = None,
    ):
        if search_split not in SEARCH_PARTS:
            raise ValueError(f"search_split must be one of {', '.join(SEARCH_PARTS)}, got {search_split!r}")
        if cache_views not in ("augmented", "all"):
            raise ValueError(f"cache_views must be augmented or all, got {cache_views!r}")
        if search_split == "test":
            warnings.warn(TEST_SELECTION_WARNING.format(what="alpha/beta are searched",
                                                        where="ImageNet protocol, main_imagenet.py"), stacklevel=2)
        if select_epoch_on_test:
            warnings.warn(TEST_SELECTION_WARNING.format(what="the Tip-Adapter-F epoch is selected",
                                                        where="Tip-Adapter-F protocol, main.py l. 111-126"),
                          stacklevel=2)
        super().__init__()
        self.save_hyperparameters(ignore=["prompts"])  # the checkpoint keeps the prompts in its "stori" entry
        self._best_test: tuple[float, torch.Tensor] | None = None
        self._finish_init(prompts)

    @property
    def method_name(self) -> str:
        return "Tip-Adapter-F" if self.hparams.fine_tune else "Tip-Adapter"

    def _build_classifier(self, prompt_set) -> None:
        self.register_buffer("clip_weights", text_classifier(self, True, False), persistent=False)  # [C, D]
        self.register_buffer("alpha", torch.tensor(float(self.hparams.init_alpha), device=self.device))
        self.register_buffer("beta", torch.tensor(float(self.hparams.init_beta), device=self.device))
        self.cache_keys = None  # [K, D] once the cache is built (or loaded)
        self.register_buffer("cache_values", None)

    def build_cache(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Keys from training features ``[K, D]`` or ``[K, 1 + V, D]`` (view 0 plain, as the datamodule caches them):
        the mean over the augmented views 1..V (``cache_views="augmented"``; all views with ``"all"``, the plain
        one where there are no augmented views), then L2-normalized; values one-hot ``[K, C]``."""
        if features.ndim == 3 and features.shape[1] > 1 and self.hparams.get("cache_views", "all") == "augmented":
            features = features[:, 1:]  # build_cache_model: augment_epoch passes of the random crop, no plain view
        feats = features.mean(dim=1) if features.ndim == 3 else features  # [K, D]
        keys = F.normalize(feats.float(), dim=-1).to(self.device)
        self.cache_keys = nn.Parameter(keys, requires_grad=bool(self.hparams.fine_tune))
        self.cache_values = F.one_hot(labels.to(self.device), self.num_classes).float()  # [K, C]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        if self.cache_keys is None and dm is not None and hasattr(dm, "split_features"):
            self.build_cache(*dm.split_features("train"))

    def forward(self, features: torch.Tensor, class_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N, C]`` for image features ``[N, D]``."""
        if self.cache_keys is None:
            raise RuntimeError("Tip-Adapter has no cache yet: fit it on a datamodule or load a checkpoint")
        feats = F.normalize(features.to(self.cache_keys), dim=-1)
        return tip_logits(feats, self.clip_weights, self.cache_keys, self.cache_values, self.alpha, self.beta)

    def class_embeddings(self) -> torch.Tensor:
        """The zero-shot part of the classifier ``[C, D]`` (the cache term depends on the image)."""
        return self.clip_weights

    def training_step(self, batch: dict, batch_idx: int):
        if not self.hparams.fine_tune:
            return None  # training-free: the epoch only builds the cache; alpha/beta are searched on val
        return super().training_step(batch, batch_idx)

    def _part_features(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = self.trainer.datamodule.split_features(part)
        if not len(labels):
            raise ValueError(f"Tip-Adapter: the datamodule's {part!r} part is empty; choose another search_split")
        return F.normalize(feats.to(self.device).float(), dim=-1), labels.to(self.device)

    def _track_best_test_epoch(self) -> None:
        """``select_epoch_on_test``: the official -F's per-epoch test evaluation at the initial alpha/beta,
        keeping the keys of the first best epoch (main.py l. 111–126)."""
        feats, labels = self._part_features("test")
        with torch.no_grad():
            acc = float((self(feats).argmax(-1) == labels).float().mean())
        if self._best_test is None or acc > self._best_test[0]:
            self._best_test = (acc, self.cache_keys.detach().clone())

    def on_validation_epoch_start(self) -> None:
        """At the last epoch of a fit, search alpha/beta on ``search_split`` (before last.ckpt is written)."""
        trainer = self.trainer
        if self.hparams.fine_tune and self.hparams.get("select_epoch_on_test") and not trainer.sanity_checking \
                and trainer.state.fn == "fit":
            self._track_best_test_epoch()
        if not self.at_last_fit_validation():
            return
        if self._best_test is not None:
            acc, keys = self._best_test
            self.cache_keys.data.copy_(keys)
            self.print(f"Tip-Adapter-F: keys of the best test epoch kept (test acc {100 * acc:.2f} at the initial "
                       "alpha/beta; the official script reports max(that, the final accuracy))")
            self._best_test = None
        split = self.hparams.get("search_split", "fewshot_val")
        feats, labels = self._part_features(SEARCH_PARTS[split])
        beta, alpha = search_alpha_beta(feats, labels, self.clip_weights, self.cache_keys.detach(),
                                        self.cache_values,
                                        self.hparams.search_scale, self.hparams.search_step)
        self.alpha.fill_(alpha)
        self.beta.fill_(beta)
        self.print(f"Tip-Adapter: searched on {split} ({len(labels)} images): beta {beta:.3f}, alpha {alpha:.3f}")

    def configure_optimizers(self):
        """AdamW (lr 1e-3, eps 1e-4) + cosine per step for -F; nothing to optimize for the training-free variant."""
        if not self.hparams.fine_tune:
            return None
        opt = torch.optim.AdamW([self.cache_keys], lr=self.hparams.lr, eps=self.hparams.eps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        super().on_load_checkpoint(checkpoint)
        if "cache_keys" in state:  # create the cache tensors with the checkpoint's shapes before loading
            self.build_cache(state["cache_keys"], state["cache_values"].argmax(-1))
