"""CuPL prompt files: load (path or URL, downloaded once), match to a dataset's classes, keep the top N.

A CuPL file is JSON ``{class name: [sentence, ...]}`` written by an LLM (Pratt et al. 2023). Its keys are
CuPL's class names, which differ from CoOp's in places, so each dataset declares an explicit name map
(class index or CoOp name -> CuPL key, plus an optional key rewrite rule) and :func:`match_cupl` fails
naming every class it cannot match.
"""

from __future__ import annotations

import difflib
import json
import re
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stori_pl.utils import atomic_write, cache_root, content_hash, write_json
from stori_pl.text.clip import load_clip, model_fingerprint

CUPL_COMMIT = "719619c829792ff8f37298266e941b7f077c7f5c"
CUPL_BASE_URL = f"https://raw.githubusercontent.com/sarahpratt/CuPL/{CUPL_COMMIT}/all_prompts"


def cupl_url(filename: str, kind: str = "full") -> str:
    """URL of a file in CuPL's repository (pinned commit), e.g. ``cupl_url("texture_prompts_full.json")``."""
    return f"{CUPL_BASE_URL}/{kind}_prompts/{filename}"


def is_url(source: str) -> bool:
    return re.match(r"^https?://", source) is not None


def fetch(url: str, cache_dir: str | Path | None = None) -> Path:
    """Download ``url`` once into ``<cache_root>/cupl/`` and return the local file."""
    dest = cache_root(cache_dir) / "cupl" / f"{content_hash(url, length=12)}-{Path(url).name or 'prompts.json'}"
    if dest.is_file():
        return dest
    try:
        with urllib.request.urlopen(url, timeout=60) as r, atomic_write(dest, "wb") as f:  # noqa: S310
            f.write(r.read())
    except OSError as e:
        raise RuntimeError(f"could not download CuPL prompts from {url} ({e}). Download the file by hand and "
                           f"pass its path as `cupl:` (or save it as {dest}).") from e
    return dest


def load_cupl(source: str | Path, cache_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Read a CuPL JSON file from a local path or an http(s) URL (cached after the first download)."""
    path = fetch(str(source), cache_dir) if is_url(str(source)) else Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CuPL prompt file not found: {path} (pass a path or URL as `cupl:`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"CuPL file {path} ({source}) is not valid JSON: {str(e)[:200]}") from None
    except _DuplicateKey as e:
        raise ValueError(f"CuPL file {path}: key {e.args[0]!r} appears twice (the second list would silently "
                         "replace the first); merge its sentences into one list") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"CuPL file {path} must be a non-empty JSON object {{class name: [sentences]}}")
    for key, value in data.items():
        if not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            raise ValueError(f"CuPL file {path}: entry {key!r} is not a list of strings")
    return data


class _DuplicateKey(Exception):
    """Internal: a JSON object repeats a key."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` ``object_pairs_hook`` refusing a repeated key (JSON keeps the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def paren_to_prefix(key: str) -> str:
    """SUN397 rule: CuPL ``"apse (indoor)"`` -> CoOp ``"indoor apse"``; other keys unchanged."""
    m = re.fullmatch(r"\s*(.+?)\s*\((.+)\)\s*", key)
    return f"{m.group(2)} {m.group(1)}" if m else key


def match_cupl(
    prompts: Mapping[str, list[str]],
    classnames: Sequence[str],
    name_map: Mapping[int | str, str] | None = None,
    key_rule: Callable[[str], str] | None = None,
    source: str = "CuPL file",
    drop_blank: bool = False,
) -> list[list[str]]:
    """The CuPL sentences of each class, by class index.

    Lookup per class ``i`` named ``n``: the mapped key ``name_map[i]`` (else ``name_map[n]``), then ``n``
    itself; each first as an exact key, then after lower-casing and ``_`` -> space (keys also rewritten by
    ``key_rule``, e.g. :func:`paren_to_prefix`). So one map serves files keyed by CuPL's or CoOp's names.
    Several classes may share one key (ImageNet's duplicate names).

    Args:
        drop_blank: Drop blank or whitespace-only sentences with a warning (default: they are an error).

    Raises:
        ValueError: naming every class without prompts (with close CuPL keys as hints), every class whose
            key holds an empty list, and every class with blank sentences (unless ``drop_blank``).
    """
    name_map = dict(name_map or {})
    by_norm: dict[str, str] = {}
    for key in prompts:
        by_norm.setdefault(_norm(key), key)
        if key_rule is not None:
            by_norm.setdefault(_norm(key_rule(key)), key)
    out, problems = [], []
    for i, name in enumerate(classnames):
        mapped = name_map.get(i, name_map.get(name))
        candidates = [c for c in (mapped, name) if c is not None]
        key = next((c for c in candidates if c in prompts), None)
        key = key or next((by_norm[_norm(c)] for c in candidates if _norm(c) in by_norm), None)
        if key is None:
            own = {_norm(c) for c in candidates}
            close = [k for k in difflib.get_close_matches(_norm(name), list(by_norm), 4) if k not in own][:3]
            problems.append(f"{i}:{name!r} has no key (close keys: {close})")
            out.append([])
            continue
        sentences, problem = _non_blank(prompts[key], i, name, key, source, drop_blank)
        if problem:
            problems.append(problem)
        out.append(sentences)
    if problems:
        raise ValueError(f"{source}: no prompts for {len(problems)} of {len(classnames)} classes: "
                         + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
                         + ". Fix the file or add the names to the dataset's cupl_name_map.")
    return out


def _non_blank(sentences: list[str], i: int, name: str, key: str, source: str,
               drop_blank: bool) -> tuple[list[str], str | None]:
    """A class's sentences without blank ones (dropped with a warning) and the problem to report, if any."""
    blank = [j for j, s in enumerate(sentences) if not s.strip()]
    if not sentences:
        return [], f"{i}:{name!r}: key {key!r} holds an empty list"
    if blank and not drop_blank:
        return [], (f"{i}:{name!r}: key {key!r} has {len(blank)} blank or whitespace-only sentence(s) at "
                    f"position(s) {blank[:5]} (remove them, or set drop_blank_prompts: true to drop them)")
    if blank:
        warnings.warn(f"{source}: dropped {len(blank)} blank sentence(s) of class {name!r} (key {key!r})",
                      stacklevel=4)
    kept = [s for s in sentences if s.strip()]
    return kept, None if kept else f"{i}:{name!r}: key {key!r} holds only blank sentences"


@torch.no_grad()
def sentence_features(texts: Sequence[str], model, tokenizer, batch_size: int = 256) -> torch.Tensor:
    """Normalized CLIP text features of CuPL sentences, for ranking them (:func:`top_prompts`).

    Args:
        texts: ``N`` sentences.
        model: open_clip model (encodes on its device).
        tokenizer: Its tokenizer.
        batch_size: Sentences per ``encode_text`` call.

    Returns:
        ``[N, D]`` float32 on the CPU (``[0]`` for no sentences).
    """
    device = next(model.parameters()).device
    chunks = []
    for s in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[s:s + batch_size])).to(device)  # [b, L]
        chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())  # [b, D]
    return torch.cat(chunks) if chunks else torch.zeros(0)


def top_prompts(
    prompts: list[list[str]],
    image_features: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    encode: Callable[[list[str]], torch.Tensor],
) -> list[list[str]]:
    """Keep, per class, the ``n`` prompts most similar to the class's training images (paper: N = 10).

    Similarity = cosine of the prompt's text feature with the mean of the class's normalized image
    features. Kept prompts stay in file order. Classes without images keep their first ``n``.

    Args:
        prompts: Per class, its CuPL sentences.
        image_features: [N, D] normalized training image features.
        labels: [N] long class indices.
        n: Prompts to keep per class.
        encode: texts -> [len(texts), D] normalized text features.
    """
    flat = [s for p in prompts if len(p) > n for s in p]
    text = encode(flat) if flat else None  # [P, D]
    out, pos = [], 0
    for c, p in enumerate(prompts):
        if len(p) <= n:
            out.append(list(p))
            continue
        emb, pos = text[pos:pos + len(p)], pos + len(p)  # [len(p), D]
        mask = labels == c
        if not mask.any():
            out.append(list(p[:n]))
            continue
        centre = image_features[mask].float().mean(0)  # [D]
        keep = sorted((emb @ centre).topk(n).indices.tolist())
        out.append([p[k] for k in keep])
    return out


def cached_top_prompts(prompts: list[list[str]], feats: torch.Tensor, labels: torch.Tensor, n: int, clip_model: str,
                       pretrained: str | None, cache_dir: str | Path | None = None) -> list[list[str]]:
    """:func:`top_prompts` with the CLIP's text encoder, cached as JSON under ``<cache>/prompts/`` (encoding every
    sentence is the slow part; a random-init CLIP is never read from the cache).

    Args:
        prompts: CuPL sentences per class.
        feats: Training image features ``[N, D]``.
        labels: Their labels ``[N]``.
        n: Sentences to keep per class.
        clip_model, pretrained: The CLIP (as for :func:`stori_pl.text.clip.load_clip`).
        cache_dir: Cache folder (default ``$STORI_CACHE`` or ``~/.cache/stori_pl``).
    """
    key = content_hash(model_fingerprint(clip_model, pretrained), prompts, feats.sum(0).tolist(), labels.tolist(), n)
    path = cache_root(cache_dir) / "prompts" / f"{key}.json"
    if path.is_file() and pretrained is not None:
        try:
            out = json.loads(path.read_text(encoding="utf-8"))
            if len(out) == len(prompts) and all(set(o) <= set(p) for o, p in zip(out, prompts)):
                return out
        except (json.JSONDecodeError, TypeError):
            pass
    model, _, tokenizer = load_clip(clip_model, pretrained)
    original = next(model.parameters()).device
    model.to("cuda" if torch.cuda.is_available() else original)
    try:
        out = top_prompts(prompts, feats, labels, n, lambda t: sentence_features(t, model, tokenizer))
    finally:
        model.to(original)
    write_json(path, out)
    return out
