"""The ``"stori"`` entry of a classifier checkpoint: what it holds and the checks made when it is loaded.

A checkpoint holds the trained tensors plus this entry (format, stori-pl version, model name, CLIP name +
pretrained tag, start block, prompts) — enough for ``load_from_checkpoint`` without any data.
:class:`~stori_pl.models.base.ClipClassifier` writes it in ``on_save_checkpoint`` (:func:`stori_entry`)
and checks it in ``on_load_checkpoint`` (:func:`check_stori_entry`).
"""

from __future__ import annotations

import warnings
from typing import Any

from stori_pl import __version__
from stori_pl.text.clip import builtin_version

CHECKPOINT_FORMAT = 1  # bump when the "stori" checkpoint entry changes incompatibly


def first_difference(a: list[str], b: list[str]) -> str:
    """Where two class lists first differ, for error messages.

    Args:
        a: One list of class names.
        b: The other.

    Returns:
        ``"class i: 'x' vs 'y'"`` at the first differing index, else ``"N vs M classes"`` (a prefix of the other).
    """
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"class {i}: {x!r} vs {y!r}"
    return f"{len(a)} vs {len(b)} classes"


def stori_entry(model: Any) -> dict:
    """What a built classifier's checkpoint ``"stori"`` entry holds (besides the trained tensors).

    Args:
        model: A built :class:`~stori_pl.models.base.ClipClassifier`.

    Returns:
        ``{"format", "stori_pl_version", "model", "clip_model", "pretrained", "start_block", "prompts"}``.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "stori_pl_version": __version__,
        "model": type(model).__name__,
        "clip_model": model.hparams.clip_model,
        "pretrained": model.hparams.pretrained,
        "builtin_version": builtin_version(model.hparams.clip_model) if model.hparams.pretrained == "builtin" else None,
        "start_block": model.hparams.get("start_block"),
        "prompts": model.prompt_set.to_dict(),
    }


def check_stori_entry(model: Any, checkpoint: dict) -> None:
    """Check that a checkpoint fits ``model`` and adopt its prompt set (Lightning's ``on_load_checkpoint``).

    The model is rebuilt from the checkpoint's prompts when they differ from its own and name the same classes
    (or it has none yet); a model that ``supports_new_classes`` keeps other classes and loads the shared state.

    Args:
        model: The :class:`~stori_pl.models.base.ClipClassifier` being loaded.
        checkpoint: The checkpoint dict (``"stori"`` entry + ``"state_dict"``).

    Raises:
        ValueError: No ``"stori"`` entry, another format, another model class, CLIP or start block, other
            classes (for a model with per-class parameters), or a tensor of another shape.
    """
    info = checkpoint.get("stori")
    if info is None:
        raise ValueError("not a stori-pl checkpoint (no 'stori' entry); was it written by another program?")
    if info.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint format {info.get('format')} (stori-pl {info.get('stori_pl_version')}) is not readable "
            f"by this stori-pl (format {CHECKPOINT_FORMAT}); use the stori-pl version that wrote it"
        )
    _check_model_and_clip(model, info)
    if model.prompt_set is None or model.prompt_set.to_dict() != info["prompts"]:
        same = model.prompt_set is None or list(info["prompts"]["classnames"]) == model.classnames
        if not same and not model.supports_new_classes:
            raise ValueError(
                "the checkpoint's classes differ from the datamodule's "
                f"({first_difference(list(info['prompts']['classnames']), model.classnames)})"
            )
        if same:  # (a model for new classes keeps the datamodule's classes and loads the shared state)
            model.build(info["prompts"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, value in checkpoint["state_dict"].items():
        if key in expected and tuple(value.shape) != expected[key]:
            raise ValueError(
                f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, expected {expected[key]}: "
                "it was made with a different tokenizer or prompt set"
            )


def _check_model_and_clip(model: Any, info: dict) -> None:
    """The entry's model class, CLIP and start block must be the model's (another pretrained tag: a warning)."""
    if info.get("model") != type(model).__name__:
        raise ValueError(f"checkpoint holds a {info.get('model')} model, not a {type(model).__name__}")
    if info["clip_model"] != model.hparams.clip_model:
        raise ValueError(
            f"checkpoint was trained on CLIP {info['clip_model']!r} but this model uses {model.hparams.clip_model!r}; "
            "its learned weights only fit the text encoder they were trained with"
        )
    if info["pretrained"] == model.hparams.pretrained == "builtin":
        now = builtin_version(model.hparams.clip_model)
        if info.get("builtin_version", "v1") != now:
            raise ValueError(
                f"checkpoint was trained on the builtin {info['clip_model']} weights "
                f"{info.get('builtin_version') or 'of toy world v1'}, this stori-pl ships {now}: its learned weights "
                "only fit the text encoder they were trained with; train it again (stori fit --config ...)"
            )
    if info["pretrained"] != model.hparams.pretrained:
        warnings.warn(
            f"checkpoint was trained with pretrained={info['pretrained']!r}, loading with "
            f"{model.hparams.pretrained!r}: fine if these are the same weights",
            stacklevel=4,
        )
    if model.hparams.get("start_block") != info.get("start_block"):
        raise ValueError(f"checkpoint used start_block={info.get('start_block')}, this model {model.hparams.get('start_block')}")
