"""``stori explain-eval CKPT``: how readable are a toy-world checkpoint's word weights?

Prints the explanation metrics of :mod:`stori_pl.interpret.metrics`, each next to its uniform-weights baseline
(``<metric>_uniform``): ``discriminative_share``, ``precision_at_3`` (precision@k), ``sign_agreement`` and
``sign_agreement_nuisance`` (contrastive target, on correctly classified test images), ``distractor_share``
(checkpoints trained on ToyShapesSpurious, whose sentences name a distractor), ``sink_share`` and the
pre-issue-22 ``sign_agreement_absolute``; averaged over classes, then per class.

Examples:
    stori explain-eval runs/demo/version_0/checkpoints/last.ckpt
    stori explain-eval last.ckpt --json metrics.json --top_k 3 --data_root data
"""

from __future__ import annotations

from pathlib import Path

from stori_pl.interpret.metrics import explanation_metrics
from stori_pl.models import StoriClassifier, load_checkpoint
from stori_pl.toy import TOY_GROUND_TRUTH
from stori_pl.toy.data import ToyShapes
from stori_pl.utils import write_json


METRIC_ORDER = ("discriminative_share", "precision_at_k", "sign_agreement", "sign_agreement_nuisance", "distractor_share",
                "sink_share", "sign_agreement_absolute", "top_word_defining")
"""Printed metrics, in order; each is followed by its ``_uniform`` baseline where it has one."""


def explain_eval(
    checkpoint: Path,
    json: Path | None = None,
    top_k: int = 3,
    data_root: Path = Path("data"),
    split: str = "test",
    sign_agreement: bool = True,
    max_images_per_class: int | None = None,
    per_class: bool = True,
):
    """Explanation metrics of a SToRI checkpoint trained on the toy world (ToyShapes).

    Args:
        checkpoint: StoriClassifier checkpoint (e.g. runs/demo/version_0/checkpoints/last.ckpt).
        json: Also write the metrics (summary and per class) to this JSON file.
        top_k: k of precision@k.
        data_root: Folder holding toy_shapes/ (generated there when absent), for the sign agreement (also for
            ToyShapesSpurious checkpoints: its test scenes are drawn as ToyShapes' are, without the spurious cue).
        split: Images scored by the sign agreement: test or val.
        sign_agreement: Compute the attribution sign agreement (needs the images; false: weights only).
        max_images_per_class: Score at most this many correctly classified images per class.
        per_class: Print the per-class table too.

    Returns:
        The :class:`~stori_pl.interpret.metrics.ExplanationMetrics`.
    """
    if top_k < 1:
        raise ValueError(f"--top_k must be >= 1, got {top_k}")
    if split not in ("test", "val"):
        raise ValueError(f"--split must be test or val, got {split!r}")
    model = load_checkpoint(checkpoint, expect=StoriClassifier)
    if not TOY_GROUND_TRUTH.covers(model.classnames):
        raise ValueError(
            f"{checkpoint}: classes such as {model.classnames[:3]} are not toy-world (pattern, color, shape) triples; "
            "explanation metrics need the toy world's ground truth (train with configs/demo.yaml)"
        )
    features = labels = None
    if sign_agreement:
        features, labels = toy_features(model, data_root, split)
    result = explanation_metrics(model.word_weights(), TOY_GROUND_TRUTH, top_k, model, features, labels, max_images_per_class)
    print(format_metrics(result, per_class))
    if json is not None:
        write_json(json, result.to_dict())
        print(f"written {json}")
    return result


def toy_features(model, data_root: Path, split: str = "test"):
    """Image features ``[N, D]`` and labels ``[N]`` of the ToyShapes ``split``, restricted to the model's classes."""
    import torch


    dm = ToyShapes(root=str(data_root), clip_model=model.hparams.clip_model, pretrained=model.hparams.pretrained,
                   classes=list(model.classnames))
    dm.setup("test" if split == "test" else "validate")
    batches = list(dm.test_dataloader() if split == "test" else dm.val_dataloader())
    return torch.cat([b["features"] for b in batches]), torch.cat([b["label"] for b in batches])


def format_metrics(result, per_class: bool = True) -> str:
    """``name  value  (name_uniform  value)`` lines of the summary, then (optionally) a per-class table."""
    keys = [k for k in METRIC_ORDER if k in result.summary]
    names = {k: result.name(k) for k in keys}
    lines = []
    for k in keys:
        line = f"{names[k]:<26}{result.summary[k]:.3f}"
        base = f"{k}_uniform"
        if base in result.summary:
            line += f"    {result.name(base):<34}{result.summary[base]:.3f}"
        lines.append(line)
    if per_class and result.per_class:
        width = max(len(c) for c in result.per_class) + 2
        lines += ["", "class".ljust(width) + "".join(f"{names[k]:>22}" for k in keys)]
        for name, m in result.per_class.items():
            lines.append(name.ljust(width) + "".join(f"{m[k]:>22.3f}" if k in m else f"{'—':>22}" for k in keys))
    return "\n".join(lines)
