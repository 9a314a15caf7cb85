"""How many CPU threads a ``stori`` command gives torch, chosen before torch is imported (issue 20).

torch's CPU thread pool (OpenMP) starts one thread per core and, between parallel regions, keeps them spinning.
On a machine whose cores are busy with other jobs the spinning threads compete with those jobs and with each
other: the toy demo took 26 min instead of 45 s (18x the CPU time for the same work) on two busy cores. A toy-size
model gains nothing from several threads anyway (its matrices are 64-256 wide). So, unless told otherwise:

- **toy-size runs** (``stori-toy`` / ``stori-tiny`` CLIPs, ``ToyShapes``, ``configs/demo*.yaml``, ``toy-pretrain``)
  use **1** thread;
- other runs use the cores that are **idle**: ``cores - 1-minute load average`` (at least 1, at most the cores
  this process may use), so a busy machine degrades gracefully instead of oversubscribing;
- ``OMP_NUM_THREADS`` set by the user is respected as it is (torch reads it);
- ``STORI_THREADS=N`` forces N threads, ``STORI_THREADS=auto`` the rule above, ``STORI_THREADS=torch`` leaves
  torch's default (one thread per core).

The choice is written to ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of this process (so DataLoader workers and DDP
ranks inherit it) before torch starts its pool; :func:`apply_to_torch` sets ``torch.set_num_threads`` too when
torch was already imported. GPU work is unaffected (it uses one CPU thread to launch kernels).
"""

from __future__ import annotations

import os
import sys

TOY_MARKERS = ("stori-toy", "stori-tiny", "ToyShapes", "demo.yaml", "demo_retrieval", "configs/demo")
TOY_COMMANDS = ("toy-pretrain",)


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return 0.0


def is_toy_run(argv: list[str]) -> bool:
    """Whether the command line runs a toy-size model (see the module docstring)."""
    if argv and argv[0] in TOY_COMMANDS:
        return True
    if argv and argv[0] in ("fit", "validate", "test", "predict") and any(a in ("demo", "demo_retrieval") for a in argv):
        return True
    return any(marker in arg for arg in argv for marker in TOY_MARKERS)


def choose_threads(argv: list[str]) -> int | None:
    """Threads for torch for this command line, or None to leave torch's default / the user's OMP_NUM_THREADS.

    Raises:
        ValueError: ``STORI_THREADS`` is neither a positive integer, ``auto`` nor ``torch``.
    """
    forced = os.environ.get("STORI_THREADS", "").strip().lower()
    if forced == "torch":
        return None
    if forced and forced != "auto":
        if not forced.isdigit() or int(forced) < 1:
            raise ValueError(f"STORI_THREADS={forced!r}: give a number of threads >= 1, auto or torch")
        return int(forced)
    if not forced and os.environ.get("OMP_NUM_THREADS"):
        return None
    if is_toy_run(argv):
        return 1
    cores = _cores()
    return max(1, min(cores, int(cores - _load() + 0.5)))


def configure_threads(argv: list[str]) -> int | None:
    """Choose the thread count (:func:`choose_threads`) and apply it to this process; returns it (None: unchanged)."""
    n = choose_threads(argv)
    if n is not None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
        apply_to_torch(n)
    return n


def apply_to_torch(n: int) -> None:
    """``torch.set_num_threads(n)`` if torch is already imported (otherwise it reads OMP_NUM_THREADS itself)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


__all__ = ["choose_threads", "configure_threads", "is_toy_run", "apply_to_torch"]
