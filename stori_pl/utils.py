"""Small shared helpers: atomic file writes, cache folders, content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    Readers never see a half-written file, and an exception leaves any previous ``path`` untouched.

    Args:
        path: Final destination.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        **kwargs: Passed to :func:`open` (e.g. ``encoding``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path, ".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for writers that take a file name (safetensors, savefig).

    The writer may replace the temporary file (safetensors' ``save_file`` creates it anew with mode 0600);
    the usual permissions (``0o666 & ~umask``) are restored before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _mkstemp(path, path.suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mkstemp(path: Path, suffix: str) -> tuple[int, str]:
    """A temp file next to ``path`` with the usual permissions (mkstemp alone gives 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.chmod(tmp, default_file_mode())
    return fd, tmp


def default_file_mode() -> int:
    """Mode a plain ``open(path, "w")`` would give a new file: ``0o666`` less the process umask."""
    try:  # Linux: read it without changing it (no window where other threads see umask 0)
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)  # elsewhere the only way to read it is to set it and put it back
        os.umask(umask)
    return 0o666 & ~umask


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)


def content_hash(*parts: Any, length: int = 16) -> str:
    """Stable hex digest of JSON-serializable parts (used as cache keys)."""
    payload = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()[:length]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Resolve the cache folder: argument, else ``$STORI_CACHE``, else ``~/.cache/stori_pl``."""
    root = cache_dir or os.environ.get("STORI_CACHE") or "~/.cache/stori_pl"
    return Path(root).expanduser()
