"""Baselines in the same framework: zero-shot CLIP (base and/or CuPL prompts) and TaskRes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stori_pl.models.base import ClipClassifier, class_mean, encode_plain_prompts


def _prompt_list(prompt_set, use_base: bool, use_cupl: bool) -> tuple[list[str], list[int]]:
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
    texts, classes = _prompt_list(model.prompt_set, use_base, use_cupl)
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

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        use_base_prompts: bool = True,
        use_cupl_prompts: bool = True,
        prompts: dict | None = None,
    ):
        super().__init__()
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
    """TaskRes (Yu et al. 2023): a learned residual on the zero-shot text classifier.

    ``W = normalize(W0 + alpha · R)`` with ``W0`` the frozen zero-shot class embeddings and ``R [C, D]``
    initialized at 0. SToRI's reproduction: Adam, lr 2e-5 (ImageNet) / 2e-4 (others), weight decay 5e-3.

    Args:
        clip_model: open_clip architecture name.
        pretrained: open_clip tag, local checkpoint file, ``"builtin"`` or None (random init).
        alpha: Residual scale.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        use_base_prompts: Build ``W0`` from the template prompts (original TaskRes).
        use_cupl_prompts: Build ``W0`` from the CuPL sentences too.
        prompts: ``PromptSet.to_dict()``; None → from the datamodule.
    """

    trained_state = ("residual",)

    def __init__(
        self,
        clip_model: str = "ViT-L-14",
        pretrained: str | None = "openai",
        alpha: float = 0.5,
        lr: float = 2e-4,
        weight_decay: float = 5e-3,
        use_base_prompts: bool = True,
        use_cupl_prompts: bool = False,
        prompts: dict | None = None,
    ):
        super().__init__()
        self._finish_init(prompts)

    @property
    def method_name(self) -> str:
        return "TaskRes (CuPL init)" if self.hparams.use_cupl_prompts else "TaskRes"

    def _build_classifier(self, prompt_set) -> None:
        base = text_classifier(self, self.hparams.use_base_prompts, self.hparams.use_cupl_prompts)  # [C, D]
        self.register_buffer("base_weights", base, persistent=False)
        self.residual = nn.Parameter(torch.zeros_like(base))  # [C, D]

    def class_embeddings(self) -> torch.Tensor:
        """Class embeddings ``[C, D]`` (L2-normalized), differentiable w.r.t. ``residual``."""
        return F.normalize(self.base_weights + self.hparams.alpha * self.residual, dim=-1)
