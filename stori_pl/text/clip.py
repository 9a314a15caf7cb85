"""Loading frozen open_clip models and adapting their text towers for SToRI.

``load_clip`` is the one way stori-pl gets a CLIP: an open_clip pretrained tag (downloaded on the
user's machine by open_clip), a local checkpoint file, the shipped toy weights (``"builtin"``) or a
random init (``None``, for tests and benchmarks). ``text_tower`` exposes the pieces of the text
encoder that :class:`stori_pl.text.encoder.WeightedTextEncoder` drives block by block.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
# model name -> file used for ``pretrained="builtin"``
BUILTIN_WEIGHTS = {"stori-toy": ASSETS_DIR / "stori-toy.safetensors"}
PRECISIONS = ("fp32", "fp16", "bf16", "amp", "amp_bf16", "pure_fp16", "pure_bf16")

_LOADED: dict[tuple, tuple[nn.Module, Callable, Callable]] = {}


def builtin_version(model_name: str) -> str | None:
    """Which shipped weights ``pretrained="builtin"`` means: ``"v<world version>:<first 12 hex of the weights'
    sha256>"`` from the sidecar JSON (None when the model has no builtin weights). Checkpoints record it, so one
    trained on other shipped weights (e.g. toy world v1's stori-toy) is refused instead of silently misread."""
    if model_name not in BUILTIN_WEIGHTS:
        return None
    sidecar = BUILTIN_WEIGHTS[model_name].with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return f"v{meta.get('world_version', 1)}:{str(meta.get('weights_sha256', ''))[:12]}"


class RandomWeightsWarning(UserWarning):
    """A CLIP was created with random weights: embeddings carry no meaning."""


def register_model_configs(folder: str | os.PathLike = CONFIG_DIR) -> None:
    """Register every open_clip model config (``*.json``) in ``folder`` with open_clip."""
    for path in sorted(Path(folder).glob("*.json")):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)


register_model_configs()


def _close(word: str, options: Sequence[str]) -> str:
    matches = difflib.get_close_matches(word, list(options), n=6, cutoff=0.4)
    return ", ".join(matches) if matches else "(none close)"


def resolve_pretrained(model_name: str, pretrained: str | None) -> str | None:
    """Validate ``model_name`` and turn ``pretrained`` into what open_clip accepts.

    Args:
        model_name: open_clip architecture name, e.g. ``"ViT-B-32"``.
        pretrained: open_clip tag, local checkpoint path, ``"builtin"`` or None.

    Returns:
        The tag or file path to pass to open_clip (None for random init).

    Raises:
        ValueError: unknown model or tag (the message lists close matches).
        FileNotFoundError: ``pretrained`` looks like a path but no such file exists.
    """
    models = open_clip.list_models()
    if model_name not in models:
        raise ValueError(
            f"unknown CLIP model {model_name!r}; close matches: {_close(model_name, models)}. "
            "`python -c 'import open_clip; print(open_clip.list_models())'` lists all."
        )
    if pretrained is None or os.path.isfile(os.path.expanduser(pretrained)):
        return None if pretrained is None else os.path.expanduser(pretrained)
    if pretrained == "builtin":
        if model_name not in BUILTIN_WEIGHTS:
            raise ValueError(f"no builtin weights for {model_name!r}; builtin: {sorted(BUILTIN_WEIGHTS)}")
        path = BUILTIN_WEIGHTS[model_name]
        if not path.is_file():
            raise FileNotFoundError(f"builtin weights {path} are missing; run `stori toy-pretrain` to make them")
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained in tags:
        return pretrained
    if any(sep in pretrained for sep in ("/", os.sep)) or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        raise FileNotFoundError(f"pretrained checkpoint file {pretrained!r} does not exist")
    raise ValueError(
        f"unknown pretrained tag {pretrained!r} for {model_name}; close matches: {_close(pretrained, tags)}; "
        f"all tags: {', '.join(tags) or '(none: pass a checkpoint file or None)'}"
    )


def load_clip(
    model_name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> tuple[nn.Module, Callable, Callable]:
    """Create a frozen open_clip model, its eval image transform and its tokenizer.

    Calls are memoized on their arguments, so a datamodule and a LightningModule asking for the same
    CLIP share one copy.

    Args:
        model_name: open_clip architecture (``"ViT-L-14"``, ``"stori-toy"``, ...).
        pretrained: open_clip tag (e.g. ``"openai"``, ``"laion2b_s34b_b79k"``, ``"metaclip_fullcc"``),
            a local checkpoint file, ``"builtin"`` (shipped weights of ``stori-toy``) or None for a
            random init (warns: results are meaningless).
        device: Where to put the model.
        precision: One of ``PRECISIONS`` (open_clip's precision argument).
        cache_dir: open_clip download cache for pretrained tags.

    Returns:
        ``(model, preprocess, tokenizer)``; every parameter has ``requires_grad=False``, eval mode.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    key = (model_name, pretrained, str(torch.device(device)), precision, cache_dir)
    if key in _LOADED:
        return _LOADED[key]
    source = resolve_pretrained(model_name, pretrained)
    if source is None:
        warnings.warn(
            f"{model_name} has random weights (pretrained=None): embeddings are meaningless; "
            "use this only for tests and benchmarks.",
            RandomWeightsWarning,
            stacklevel=2,
        )
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=source, device=device, precision=precision, cache_dir=cache_dir
    )
    model.requires_grad_(False).eval()
    model.stori_model_name = model_name
    tokenizer = open_clip.get_tokenizer(model_name)
    _LOADED[key] = (model, preprocess, tokenizer)
    return _LOADED[key]


def clear_clip_cache() -> None:
    """Forget memoized models (frees their memory once nothing else holds them)."""
    _LOADED.clear()


def model_fingerprint(model_name: str, pretrained: str | None) -> str:
    """A stable string naming a model's weights, for cache keys (files by size and mtime)."""
    source = resolve_pretrained(model_name, pretrained)
    if source is not None and os.path.isfile(source):
        st = os.stat(source)
        return f"{model_name}|file:{os.path.abspath(source)}|{st.st_size}|{int(st.st_mtime)}"
    return f"{model_name}|{source}"


class PromptWarning(UserWarning):
    """A prompt is cut to the context length, or is empty. Shown once per distinct message."""


# a prompt tokenized by several steps (e.g. `stori embed`) is reported once, not once per step
warnings.filterwarnings("once", category=PromptWarning, append=True)


def shorten(text: str, limit: int = 60) -> str:
    """``repr`` of ``text``, cut to ``limit`` characters with the total length noted (for warnings)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


_shown_prompt_warnings: set[str] = set()


def warn_prompt(message: str, stacklevel: int = 3) -> None:
    """Issue a :class:`PromptWarning` (``stacklevel`` counted from the caller of this function).

    Under the default ``"once"`` filter a message is shown once per process, even when several steps
    tokenize the same prompt (Python's own once-registry is cleared whenever any library edits the
    warning filters, so it is kept here). Other filters (``"always"``, ``"error"``, pytest's) apply as usual.
    """
    action = next((f[0] for f in warnings.filters if issubclass(PromptWarning, f[2]) and f[3] is None
                   and (f[1] is None or f[1].match(message))), "default")
    if action == "once":
        if message in _shown_prompt_warnings:
            return
        _shown_prompt_warnings.add(message)
    warnings.warn(message, PromptWarning, stacklevel=stacklevel)


def check_empty(text: str, stacklevel: int = 4) -> None:
    """Warn when ``text`` is empty or only whitespace: it embeds as the start/end tokens alone."""
    if not text.strip():
        warn_prompt(f"empty prompt {text!r}: its embedding holds no words (only the start/end tokens)", stacklevel)


def tokenize(texts: Sequence[str], tokenizer: Callable) -> torch.Tensor:
    """Tokenize plain prompts like open_clip, warning (with the prompt, shortened) when one is cut to the
    context or is empty.

    Args:
        texts: Prompts (no weight syntax is interpreted).
        tokenizer: An open_clip tokenizer.

    Returns:
        LongTensor ``[B, context_length]``.
    """
    tokens = tokenizer(list(texts))  # [B, L]
    encode = getattr(tokenizer, "encode", None)
    limit = tokens.shape[1] - 2  # room left by SOS and EOT
    for text in texts:
        check_empty(text)
        if callable(encode) and len(encode(text)) > limit:
            warn_prompt(f"prompt longer than the {tokens.shape[1]}-token context, truncated: {shorten(text)}")
    return tokens


@dataclass
class TextTower:
    """The parts of an open_clip text encoder that SToRI runs block by block."""

    name: str
    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # [ctx, W]
    blocks: nn.ModuleList
    ln_final: nn.Module
    text_projection: nn.Module | torch.Tensor | None
    causal_mask: torch.Tensor  # [ctx, ctx] additive, -inf above the diagonal
    num_heads: int
    batch_first: bool
    pool_type: str  # "argmax" (EOT has the largest id) or "eos"
    eos_id: int | None

    @property
    def cast_dtype(self) -> torch.dtype:
        """The dtype the blocks compute in."""
        return self.blocks[0].mlp.c_fc.weight.dtype

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, W] -> [B, D]`` through ``text_projection`` (if any)."""
        proj = self.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Module) else pooled @ proj


def text_tower(model: nn.Module) -> TextTower:
    """Adapt an open_clip ``CLIP`` or ``CustomTextCLIP`` (with a ``TextTransformer``) for SToRI.

    Raises:
        NotImplementedError: for text towers SToRI cannot drive (Hugging Face towers, CoCa's appended
            class token, bidirectional towers without a causal mask or without EOT pooling).
    """
    name = getattr(model, "stori_model_name", type(model).__name__)
    src = model.text if hasattr(model, "text") else model
    transformer = getattr(src, "transformer", None)
    if not isinstance(getattr(src, "token_embedding", None), nn.Embedding) or transformer is None:
        raise NotImplementedError(
            f"{name}: text tower {type(src).__name__} is not supported; SToRI needs an open_clip "
            "TextTransformer (Hugging Face text towers are not supported)"
        )
    pool = getattr(src, "pool_type", getattr(src, "text_pool_type", "argmax"))
    eos_id = getattr(src, "eos_id", getattr(src, "text_eos_id", None))
    if getattr(src, "cls_emb", None) is not None or src.attn_mask is None or pool not in ("argmax", "eos"):
        raise NotImplementedError(
            f"{name}: SToRI needs a causal text encoder pooled at the EOT token "
            f"(this one: pool_type={pool!r}, causal={src.attn_mask is not None})"
        )
    attn = transformer.resblocks[0].attn
    return TextTower(
        name=name,
        token_embedding=src.token_embedding,
        positional_embedding=src.positional_embedding,
        blocks=transformer.resblocks,
        ln_final=src.ln_final,
        text_projection=src.text_projection,
        causal_mask=src.attn_mask,
        num_heads=attn.num_heads,
        batch_first=getattr(transformer, "batch_first", True),
        pool_type=pool,
        eos_id=eos_id,
    )
