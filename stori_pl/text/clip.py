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

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
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


def register_model_configs(folder: str | os.PathLike = MODEL_CONFIG_DIR) -> None:
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
    device: str | torch.device | None = None,
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> tuple[nn.Module, Callable, Callable]:
    """Create a frozen open_clip model, its eval image transform and its tokenizer.

    Calls are memoized on what the copy holds (architecture, weights, precision), so a datamodule and a
    LightningModule asking for the same CLIP share one copy. That copy is one object wherever it lives: a call
    with a ``device`` moves it there, one without leaves it where it is, and a holder that keeps it on a device
    (a LightningModule) moves it with its own ``.to()``.

    Args:
        model_name: open_clip architecture (``"ViT-L-14"``, ``"stori-toy"``, ...).
        pretrained: open_clip tag (e.g. ``"openai"``, ``"laion2b_s34b_b79k"``, ``"metaclip_fullcc"``),
            a local checkpoint file, ``"builtin"`` (shipped weights of ``stori-toy``) or None for a
            random init (warns: results are meaningless).
        device: Where to put the model (None: where the memoized copy already is; a new copy on the CPU).
        precision: One of ``PRECISIONS`` (open_clip's precision argument).
        cache_dir: open_clip download cache for pretrained tags.

    Returns:
        ``(model, preprocess, tokenizer)``; every parameter has ``requires_grad=False``, eval mode.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    key = (model_name, pretrained, precision, cache_dir)
    if key in _LOADED:
        if device is not None:
            _LOADED[key][0].to(device)
        return _LOADED[key]
    source = resolve_pretrained(model_name, pretrained)
    if source is None:
        warnings.warn(
            f"{model_name} has random weights (pretrained=None): embeddings are meaningless; "
            "use this only for tests and benchmarks.",
            RandomWeightsWarning,
            stacklevel=2,
        )
    model, preprocess = _create(model_name, source, "cpu" if device is None else device, precision, cache_dir)
    model.requires_grad_(False).eval()
    model.stori_model_name = model_name
    tokenizer = _get_tokenizer(model, model_name, source)
    model.stori_special_ids = special_token_ids(tokenizer)
    _LOADED[key] = (model, preprocess, tokenizer)
    return _LOADED[key]


class StandInTokenizer:
    """A word-level stand-in with SentencePiece's layout (``x_1 .. x_N eos pad ...``, no start token) for a
    random-init model whose real tokenizer needs a download (SigLIP's, SigLIP2's): benchmarks and tests only.

    Words (lower-cased, split on non-letters) map to ids by a stable hash; ids 0..2 are pad, eos and unknown.

    Args:
        context_length: Row length.
        vocab_size: The model's vocabulary size.
    """

    pad_token_id, eos_token_id = 0, 1

    def __init__(self, context_length: int, vocab_size: int):
        self.context_length, self.vocab_size = int(context_length), int(vocab_size)
        self._words: dict[int, str] = {}

    def encode(self, text: str) -> list[int]:
        import re
        import zlib

        words = re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())
        ids = [3 + zlib.crc32(w.encode("utf-8")) % (self.vocab_size - 3) for w in words]
        self._words.update(zip(ids, words))
        return ids

    def word_of(self, token_id: int) -> str:
        """The word a token id was made from (``<id>`` if this tokenizer never encoded it)."""
        return self._words.get(int(token_id), f"<{int(token_id)}>")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = context_length or self.context_length
        out = torch.full((len(texts), n), self.pad_token_id, dtype=torch.long)  # [B, L]
        for i, text in enumerate(texts):
            ids = (self.encode(text) + [self.eos_token_id])[:n]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def _get_tokenizer(model: nn.Module, model_name: str, source: str | None) -> Callable:
    """open_clip's tokenizer of ``model_name``; a random-init model whose tokenizer cannot be loaded (it needs a
    download) gets a :class:`StandInTokenizer` with a warning, a pretrained one a one-line error."""
    hf_name = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    offline = {"local_files_only": True} if hf_name and source is None else {}  # no network retries for tests
    try:
        return open_clip.get_tokenizer(model_name, **offline)
    except (OSError, ImportError, ValueError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if source is not None:
            raise FileNotFoundError(
                f"the tokenizer of {model_name} could not be loaded ({reason}); open_clip downloads it on first "
                "use (Hugging Face hub or storage.googleapis.com, with the package transformers): run once with "
                "network access, or set HF_HOME to a folder that holds it") from None
        warnings.warn(f"the tokenizer of {model_name} could not be loaded ({reason}); the random-init model "
                      "gets a word-hash stand-in (StandInTokenizer): for benchmarks and tests only",
                      RandomWeightsWarning, stacklevel=3)
        context = getattr(model, "context_length", None) or 64
        vocab = getattr(model, "vocab_size", None) or text_tower(model).token_embedding.num_embeddings
        return StandInTokenizer(context, vocab)


def _create(model_name: str, source: str | None, device, precision: str, cache_dir: str | None):
    """open_clip's model and eval transform; a tag that cannot be downloaded or a file that is not a checkpoint
    raises one clear ValueError (:mod:`stori_pl.text.clip_weights`) instead of open_clip's tracebacks."""
    import logging

    from stori_pl.text import clip_weights

    is_file = source is not None and os.path.isfile(source)
    where = clip_weights.check_tag_available(model_name, source, cache_dir) if source and not is_file else ""
    quiet = logging.Filter()
    quiet.filter = lambda record: not str(record.msg).startswith(("Failed to download weights", "Pretrained tag"))
    logging.getLogger().addFilter(quiet)  # open_clip logs the error it then raises
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # torch, before it refuses
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=source, device=device, precision=precision, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - open_clip / torch raise many types for these two cases
        if is_file and not isinstance(err, (MemoryError, NotImplementedError)):
            raise clip_weights.not_a_checkpoint(source, err) from err
        if source and not is_file and isinstance(err, (RuntimeError, OSError)) and "download" in str(err).lower():
            reason = str(err).strip().splitlines()[0][:200]
            raise clip_weights.unavailable(model_name, source, where, reason) from err
        raise
    finally:
        logging.getLogger().removeFilter(quiet)
    return model, preprocess


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


def special_token_ids(tokenizer: Callable) -> frozenset[int]:
    """Ids of a tokenizer's special tokens (start, end, padding, ...): the positions SToRI never weights.

    Args:
        tokenizer: open_clip ``SimpleTokenizer`` (start/end ids, padding 0) or ``HFTokenizer`` (its Hugging Face
            tokenizer's ``all_special_ids`` and pad id).
    """
    ids = set()
    for name in ("sot_token_id", "eot_token_id", "pad_token_id", "eos_token_id"):
        if isinstance(getattr(tokenizer, name, None), int):
            ids.add(getattr(tokenizer, name))
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
    ids.update(int(i) for i in getattr(inner, "all_special_ids", None) or [])
    if isinstance(getattr(inner, "pad_token_id", None), int):
        ids.add(inner.pad_token_id)
    if hasattr(tokenizer, "sot_token_id"):
        ids.add(0)  # SimpleTokenizer pads with 0
    return frozenset(ids)


@dataclass
class TextTower:
    """The parts of an open_clip text encoder that SToRI runs block by block.

    Causal towers (CLIP) and bidirectional ones (SigLIP, SigLIP2, MobileCLIP: ``no_causal_mask``) are both driven:
    SToRI's Eq. 4 is an additive key bias, which applies to any self-attention. A bidirectional tower has
    ``causal_mask`` all zeros, every position (padding included, since open_clip's SigLIP towers do not mask
    padding) reaches the pooled one, and the sequence is never cut after the end token.
    """

    name: str
    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # [ctx, W]
    blocks: nn.ModuleList
    ln_final: nn.Module
    text_projection: nn.Module | torch.Tensor | None
    causal_mask: torch.Tensor  # [ctx, ctx] additive: -inf above the diagonal (causal) or zeros (bidirectional)
    num_heads: int
    batch_first: bool
    pool_type: str  # "argmax" (EOT has the largest id), "eos" (first eos_id), "last" or "first" position
    eos_id: int | None
    causal: bool = True
    special_ids: frozenset[int] = frozenset()  # token ids never weighted in a bidirectional tower

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


POOL_TYPES = ("argmax", "eos", "last", "first")


class UnsupportedTowerError(NotImplementedError, ValueError):
    """A text tower SToRI cannot drive (the message says why; the ``stori`` commands print it as one line)."""


def text_tower(model: nn.Module, special_ids: Sequence[int] | None = None) -> TextTower:
    """Adapt an open_clip ``CLIP`` or ``CustomTextCLIP`` (with a ``TextTransformer``) for SToRI.

    Args:
        model: The CLIP.
        special_ids: Token ids that are not words (start, end, padding) for a bidirectional tower; default: the
            ids of the tokenizer :func:`load_clip` loaded with the model (``model.stori_special_ids``), else the
            tower's ``pad_id`` and ``eos_id``.

    Raises:
        UnsupportedTowerError: (a ``NotImplementedError``) one line naming why, for text towers SToRI cannot
            drive: Hugging Face towers
            (``hf_model_name``: no open_clip blocks to bias), CoCa's appended class token, a padding mask
            (``use_pad_mask``: no shipped config uses it), pooling other than argmax/eos/last/first.
    """
    name = getattr(model, "stori_model_name", type(model).__name__)
    src = model.text if hasattr(model, "text") else model
    transformer = getattr(src, "transformer", None)
    if not isinstance(getattr(src, "token_embedding", None), nn.Embedding) or transformer is None:
        raise UnsupportedTowerError(
            f"{name}: text tower {type(src).__name__} is not supported; SToRI needs an open_clip "
            "TextTransformer (Hugging Face text towers are not supported)"
        )
    pool = getattr(src, "pool_type", getattr(src, "text_pool_type", "argmax"))
    eos_id = getattr(src, "eos_id", getattr(src, "text_eos_id", None))
    if getattr(src, "cls_emb", None) is not None:
        raise UnsupportedTowerError(f"{name}: SToRI does not support text towers with an appended class token "
                                  "(CoCa): its pooled token is not a word the prompt's weights can be read against")
    if getattr(src, "use_pad_mask", False):
        raise UnsupportedTowerError(f"{name}: SToRI does not support text towers with a padding mask "
                                  "(use_pad_mask; no open_clip config ships one)")
    if pool not in POOL_TYPES:
        raise UnsupportedTowerError(f"{name}: SToRI needs a text tower pooled at one token ({', '.join(POOL_TYPES)}); "
                                  f"this one has pool_type={pool!r}")
    causal = src.attn_mask is not None
    n = src.positional_embedding.shape[0]
    mask = src.attn_mask if causal else torch.zeros(n, n, device=src.positional_embedding.device)
    if special_ids is None:
        special_ids = getattr(model, "stori_special_ids", None)
    if special_ids is None:
        special_ids = {i for i in (getattr(src, "pad_id", None), eos_id) if isinstance(i, int)}
    attn = transformer.resblocks[0].attn
    return TextTower(
        name=name,
        token_embedding=src.token_embedding,
        positional_embedding=src.positional_embedding,
        blocks=transformer.resblocks,
        ln_final=src.ln_final,
        text_projection=src.text_projection,
        causal_mask=mask,
        num_heads=attn.num_heads,
        batch_first=getattr(transformer, "batch_first", True),
        pool_type=pool,
        eos_id=eos_id,
        causal=causal,
        special_ids=frozenset(int(i) for i in special_ids),
    )
