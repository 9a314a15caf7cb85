"""A trained classifier as a plain safetensors file: class embeddings, class names, logit scale.

Applying it needs only open_clip (no stori-pl)::

    import json, open_clip, torch
    from safetensors import safe_open
    with safe_open("dtd_classifier.safetensors", "pt") as f:
        W, scale, names = f.get_tensor("class_embeddings"), f.get_tensor("logit_scale"), json.loads(f.metadata()["classnames"])
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-L-14", pretrained="openai")
    probs = (scale * torch.nn.functional.normalize(model.encode_image(preprocess(img)[None]), dim=-1) @ W.T).softmax(-1)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stori_pl.utils import atomic_path
from stori_pl import __version__

EXPORT_FORMAT = "stori-classifier-v1"


def export_classifier(model, path: str | Path) -> None:
    """Write ``model``'s current classifier (a built :class:`~stori_pl.models.ClipClassifier`) to ``path``.

    Tensors: ``class_embeddings`` [C, D] float32 (L2-normalized), ``logit_scale`` [] (already exp'ed).
    Metadata: ``classnames`` (JSON list), ``clip_model``, ``pretrained``, ``method``, ``stori_pl_version``.
    """
    from safetensors.torch import save_file


    tensors = {
        "class_embeddings": model.eval_class_embeddings().float().cpu().contiguous(),  # [C, D]
        "logit_scale": model.logit_scale.float().cpu().reshape(()),
    }
    meta = {
        "format": EXPORT_FORMAT,
        "classnames": json.dumps(model.classnames, ensure_ascii=False),
        "clip_model": model.hparams.clip_model,
        "pretrained": str(model.hparams.pretrained),
        "method": type(model).__name__,
        "stori_pl_version": __version__,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_exported_classifier(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """Read a file written by :func:`export_classifier`.

    Returns:
        ``(class_embeddings [C, D], logit_scale [], classnames, metadata)``.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{path}: not a stori-pl classifier export (format {meta.get('format')!r})")
        return f.get_tensor("class_embeddings"), f.get_tensor("logit_scale"), json.loads(meta["classnames"]), meta
