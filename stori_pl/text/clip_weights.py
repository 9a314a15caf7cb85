"""Clear, fast errors when a CLIP's weights cannot be had (issue 20), used by :func:`stori_pl.text.clip.load_clip`.

- A pretrained **tag** (``--pretrained openai``) that is not in the local cache, on a machine that cannot reach
  the server it comes from: :class:`PretrainedUnavailableError` after one ~3 s connection probe, instead of
  open_clip's and huggingface_hub's retries (62 s and three tracebacks on an offline machine). The message
  names the tag, where open_clip looked (the Hugging Face cache or ``~/.cache/clip``) and ``--pretrained FILE``.
  The probe is skipped when the file is cached, when ``HF_HUB_OFFLINE=1`` (huggingface_hub then fails at once
  by itself) and when an HTTP(S) proxy is configured (a direct connection says nothing then);
  ``STORI_NO_NETWORK_PROBE=1`` turns it off.
- A download that fails anyway: the same one line, with open_clip's reason.
- A ``--pretrained FILE`` that is not a checkpoint (a text file, a pickle payload refused by
  ``weights_only=True``, a truncated file): :class:`NotACheckpointError` naming the file.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class PretrainedUnavailableError(ValueError):
    """A pretrained tag's weights are not cached and cannot be downloaded (printed as one line)."""


class NotACheckpointError(ValueError):
    """``--pretrained FILE`` is not a readable CLIP checkpoint (printed as one line)."""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def tag_source(model_name: str, tag: str, cache_dir: str | None = None) -> tuple[str, str | None, bool]:
    """Where open_clip gets ``tag``'s weights: ``(where it looks, host it downloads from, cached already)``."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub:
        repo, filename = os.path.split(hub)
        try:
            from huggingface_hub import constants, try_to_load_from_cache
        except ImportError:  # pragma: no cover
            return f"the Hugging Face hub ({repo})", "huggingface.co", False
        cache = cache_dir or constants.HF_HUB_CACHE
        names = [filename or "open_clip_pytorch_model.bin"]
        names = [n[: -len(Path(n).suffix)] + ".safetensors" for n in names if Path(n).suffix in (".bin", ".pth")] + names
        if filename == "" or filename == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        cached = any(isinstance(try_to_load_from_cache(repo, n, cache_dir=cache), str) for n in names)
        host = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).hostname or "huggingface.co"
        return f"the Hugging Face cache {cache} (repo {repo}) and {host}", host, cached
    if url:
        cache = cache_dir or os.path.expanduser("~/.cache/clip")
        cached = (Path(cache) / os.path.basename(url)).is_file()
        host = urlparse(url).hostname
        return f"{cache} and {host}", host, cached
    return "nowhere (no download source for this tag)", None, False


def reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable(model_name: str, tag: str, where: str, reason: str) -> PretrainedUnavailableError:
    return PretrainedUnavailableError(
        f"cannot get the {model_name} weights '{tag}': {reason}; open_clip looked in {where}. On a machine "
        f"without network, download them elsewhere and pass the file: --pretrained /path/to/checkpoint "
        f"(.bin, .pt or .safetensors)")


def check_tag_available(model_name: str, tag: str, cache_dir: str | None = None) -> str:
    """Fail fast, before open_clip retries, when ``tag`` is neither cached nor downloadable.

    Returns:
        Where open_clip looks (for the message of a later failure).

    Raises:
        PretrainedUnavailableError: Not cached and the download host cannot be reached.
    """
    where, host, cached = tag_source(model_name, tag, cache_dir)
    if cached or host is None or _truthy("STORI_NO_NETWORK_PROBE") or _truthy("HF_HUB_OFFLINE"):
        return where
    if any(os.environ.get(v) for v in PROXY_VARS):
        return where
    if not reachable(host):
        raise unavailable(model_name, tag, where, f"not in the cache and {host} cannot be reached (offline?)")
    return where


def not_a_checkpoint(path: str, err: BaseException) -> NotACheckpointError:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if "weights only" in str(err).lower() or "weights_only" in str(err):
        text = "it holds Python objects other than tensors; refused to unpickle them"
    reason = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return NotACheckpointError(f"--pretrained {path} is not a CLIP checkpoint open_clip can read ({reason[:200]})")


__all__ = ["PretrainedUnavailableError", "NotACheckpointError", "check_tag_available", "tag_source", "reachable",
           "unavailable", "not_a_checkpoint"]
