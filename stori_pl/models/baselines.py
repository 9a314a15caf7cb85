"""Baselines on the text classifier: zero-shot CLIP (base and/or CuPL prompts) and TaskRes."""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from stori_pl.models.base import ClipClassifier, class_mean, encode_plain_prompts
from stori_pl.models.schedules import dassl_scheduler


def prompt_list(prompt_set, use_base: bool, use_cupl: bool) -> tuple[list[str], list[int]]:
    """Flatten the chosen prompts: ``(texts, class index of each)``; every class must get one."""
    if not (use_base or use_cupl):
        raise ValueError("choose at least one of use_base_prompts / use_cupl_prompts")
    pairs = []
    for c in range(len(prompt_set.classnames)):
        pairs += [(c, t) for t in (prompt_set.base[c] if use_base else [])]
        pairs += [(c, t) for t in (prompt_set.cupl[c] if use_cupl else [])]
    missing = sorted(set(range(len(prompt_set.classnames))) - {c for c, _ in pairs})
    if missing:
        names = [prompt_set.classnames[i] for i in missing[:3]]
        raise ValueError(f"{len(missing)} classes have no prompts of the chosen kind (e.g. {names})")
    return [t for _, t in pairs], [c for c, _ in pairs]


def text_classifier(model: ClipClassifier, use_base: bool, use_cupl: bool) -> torch.Tensor:
    """Zero-shot class embeddings ``[C, D]``: normalize(mean(normalize(encode_text(prompt))))."""
    texts, classes = prompt_list(model.prompt_set, use_base, use_cupl)
    emb = encode_plain_prompts(model.clip, model.tokenizer, texts)  # [P, D]
    index = torch.tensor(classes, dtype=torch.long, device=emb.device)
    return class_mean(emb, index, model.num_classes)


class ZeroShotCLIP(ClipClassifier):
    """Zero-shot CLIP: class embeddings from prompts, nothing trained (use ``stori test``).

    Args:
        clip_model: open_clip architecture name.
        pretrained: open_clip tag, local checkpoint file, ``"builtin"`` or None (random init).
        use_base_prompts: Include the dataset's template prompts (``"a photo of a {}."``): plain CLIP.
        use_cupl_prompts: Include the CuPL sentences: CuPL. Both (default) = SToRI's starting point.
        prompts: ``PromptSet.to_dict()``; None → from the datamodule.
    """

    supports_new_classes = True  # nothing learned: any class set

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        use_base_prompts: bool = True,
        use_cupl_prompts: bool = True,
        prompts: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["prompts"])  # the checkpoint keeps the prompts in its "stori" entry
        self._finish_init(prompts)

    @property
    def method_name(self) -> str:
        base, cupl = self.hparams.use_base_prompts, self.hparams.use_cupl_prompts
        return "CuPL + templates" if base and cupl else "CuPL" if cupl else "Zero-shot CLIP"

    def _build_classifier(self, prompt_set) -> None:
        weights = text_classifier(self, self.hparams.use_base_prompts, self.hparams.use_cupl_prompts)
        self.register_buffer("weights", weights, persistent=False)  # [C, D]

    def class_embeddings(self) -> torch.Tensor:
        """Class embeddings ``[C, D]`` (L2-normalized)."""
        return self.weights

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        raise RuntimeError("ZeroShotCLIP has nothing to train: run `stori test` (or `stori validate`) instead of fit")


class TaskRes(ClipClassifier):
    """TaskRes (Yu et al., CVPR 2023): a learned residual on the frozen text classifier.

    Follows ``geekyutao/TaskRes``, ``trainers/taskres.py`` (``_get_base_text_features``, ``TaskResLearner``,
    ``CustomCLIP``): the base ``t_c`` of a class is the *unnormalized* mean of the text encoder's outputs over
    the class's prompts; the classifier is ``normalize(t_c + alpha · r_c)`` with ``r_c`` starting at 0; logits
    ``logit_scale.exp() · normalize(img) @ classifierᵀ``. Adam with Dassl's schedule: one warm-up epoch at a
    constant 1e-5, then cosine per epoch (:func:`stori_pl.models.schedules.dassl_scheduler`). Official configs:
    lr 2e-3 (2e-4 ImageNet), batch 256, alpha 0.5 (1.0 Flowers102); the SToRI paper's reproduction (Table 2):
    lr 2e-4 (2e-5 ImageNet), weight decay 5e-3, alpha 0.5 — the defaults here and in ``configs/taskres_*``.

    Variants (Table 2's two rows): *Base* (``use_cupl_prompts=False``: the dataset's template(s); ImageNet's
    are the 7 ``IMAGENET_TEMPLATES_SELECT`` + "a photo of a {}.") and *Base+CuPL* (``use_cupl_prompts=True``:
    ``t_c`` averages the template and the CuPL sentences).

    Class names: the official ``_get_base_text_features`` (trainers/taskres.py l. 133–134) formats
    ``template.format(text)`` with ``text`` the raw Dassl class name (``self.dm.dataset.classnames``, l. 232: the
    split file's name, e.g. ``apple_pie``, ``outdoor apartment_building``) — ``classname_format="dassl"``, the
    default; ``"spaces"`` replaces ``_`` by spaces as CoOp and Tip-Adapter do (a stori-pl option).

    Args:
        clip_model: open_clip architecture name.
        pretrained: open_clip tag, local checkpoint file, ``"builtin"`` or None (random init).
        alpha: Residual scale.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        use_base_prompts: Build ``t_c`` from the template prompts (original TaskRes).
        use_cupl_prompts: Build ``t_c`` from the CuPL sentences too (*Base+CuPL*).
        warmup_epochs: Epochs at the constant ``warmup_lr`` before the cosine (official: 1).
        warmup_lr: The warm-up learning rate (official: 1e-5).
        classname_format: ``"dassl"`` (the raw class name of the split file in the templates, as the official
            code) or ``"spaces"`` (``_`` → space, the datamodule's base prompts).
        prompts: ``PromptSet.to_dict()``; None → from the datamodule.
    """


    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        alpha: float = 0.5,
        lr: float = 2e-4,
        weight_decay: float = 5e-3,
        use_base_prompts: bool = True,
        use_cupl_prompts: bool = False,
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        classname_format: Literal["dassl", "spaces"] = "dassl",
        prompts: dict | None = None,
    ):
        if classname_format not in ("dassl", "spaces"):
            raise ValueError(f"classname_format must be dassl or spaces, got {classname_format!r}")
        super().__init__()
        self.save_hyperparameters(ignore=["prompts"])  # the checkpoint keeps the prompts in its "stori" entry
        self._finish_init(prompts)

    @property
    def method_name(self) -> str:
        return "TaskRes (Base+CuPL)" if self.hparams.use_cupl_prompts else "TaskRes (Base)"

    def base_prompt_set(self, prompt_set):
        """The prompt set with the base prompts formatted as ``classname_format`` says (``"dassl"``: the templates
        filled with the raw class names, when the prompt set has both; otherwise its base prompts as they are)."""
        from stori_pl.data.containers import PromptSet

        if self.hparams.get("classname_format", "spaces") != "dassl":
            return prompt_set
        if prompt_set.raw_classnames is None or prompt_set.templates is None:
            if any("_" in n for n in prompt_set.classnames):
                warnings.warn("TaskRes: the prompt set has no raw class names / templates; its base prompts are "
                              "used as they are (classname_format=dassl needs a datamodule's prompt set)", stacklevel=3)
            return prompt_set
        base = [[t.format(raw) for t in prompt_set.templates] for raw in prompt_set.raw_classnames]
        return PromptSet(list(prompt_set.classnames), base, prompt_set.cupl, list(prompt_set.raw_classnames),
                         list(prompt_set.templates))

    def _build_classifier(self, prompt_set) -> None:
        prompt_set = self.base_prompt_set(prompt_set)
        texts, classes = prompt_list(prompt_set, self.hparams.use_base_prompts, self.hparams.use_cupl_prompts)
        raw = encode_plain_prompts(self.clip, self.tokenizer, texts, normalize=False)  # [P, D] unnormalized
        index = torch.tensor(classes, dtype=torch.long, device=raw.device)
        summed = raw.new_zeros(len(prompt_set.classnames), raw.shape[1]).index_add(0, index, raw)  # [C, D]
        counts = torch.bincount(index, minlength=len(prompt_set.classnames)).clamp(min=1)
        self.register_buffer("base_weights", summed / counts[:, None].to(raw), persistent=False)  # [C, D] t_c
        self.residual = nn.Parameter(torch.zeros_like(self.base_weights))  # [C, D]

    def class_embeddings(self) -> torch.Tensor:
        """Class embeddings ``[C, D]`` (L2-normalized), differentiable w.r.t. ``residual``."""
        return F.normalize(self.base_weights + self.hparams.alpha * self.residual, dim=-1)

    def configure_optimizers(self) -> dict:
        """Adam; Dassl's per-epoch constant warm-up + cosine (the TaskRes code base's ``build_lr_scheduler``)."""
        self._check_ready()
        hp = self.hparams
        opt = torch.optim.Adam([self.residual], lr=hp.lr, weight_decay=hp.weight_decay)
        sched = dassl_scheduler(opt, max(1, int(self.trainer.max_epochs or 1)), hp.warmup_epochs, hp.warmup_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
