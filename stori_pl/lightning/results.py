"""The results file of a run: ``test_results.json`` in the run folder, written after every ``stori test`` (and
``stori fit``, which tests the selected checkpoint) and read by ``stori report`` and ``stori grid``.

One JSON object per run: ``method``, ``method_name``, ``dataset``, ``shots``, ``seed``, ``clip_model``,
``pretrained``, ``ckpt_path``, ``test_ckpt``, ``wall_time_s``, ``metrics`` (``{"test/acc": ...}``),
``subsample_classes``; a run on the base classes adds ``base_acc``, ``new_acc``, ``hm`` (:func:`base_to_novel`)
and ``metrics_new``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from stori_pl.utils import write_json

RESULTS_FILE = "test_results.json"


def harmonic_mean(base: float, new: float) -> float:
    """CoCoOp's HM of base and new accuracy: ``2·b·n / (b + n)`` (0 when both are 0)."""
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def base_to_novel(base_acc: float, new_acc: float) -> dict[str, float]:
    """``{"base_acc", "new_acc", "hm"}`` with :func:`harmonic_mean`."""
    return {"base_acc": base_acc, "new_acc": new_acc, "hm": harmonic_mean(base_acc, new_acc)}


def write_results(run_dir: str | os.PathLike, result: dict[str, Any]) -> Path:
    """Write ``result`` as ``run_dir/test_results.json`` (atomically); returns the path."""
    path = Path(run_dir) / RESULTS_FILE
    write_json(path, result)
    return path


def find_results(paths: list[str]) -> list[Path]:
    """``test_results.json`` files given directly or found under the given folders (recursively)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob(RESULTS_FILE))
        else:
            raise FileNotFoundError(f"{p}: no such run folder or results file")
    return found


class BadResultsFile(ValueError):
    """A ``test_results.json`` that cannot be read or reported (not UTF-8 JSON, not an object, a missing or
    non-numeric value); ``stori report`` names the file and skips it."""


def read_result_file(path: Path) -> dict[str, Any]:
    """One results file as a dict.

    Raises:
        BadResultsFile: The file cannot be read, is not UTF-8 text, not valid JSON or not a JSON object.
    """
    try:
        result = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BadResultsFile(f"not UTF-8 text (byte {err.start})") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise BadResultsFile(f"not valid JSON ({str(err)[:120]})") from None
    except OSError as err:
        raise BadResultsFile(f"cannot read it ({err.strerror or err})") from None
    if not isinstance(result, dict):
        raise BadResultsFile(f"a JSON {type(result).__name__}, not an object")
    return result


# Two-sided 95 % quantiles of Student's t by degrees of freedom; 1.96 (the normal's) beyond the last.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 60: 2.000, 120: 1.980}


def paired_interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and paired 95 % t interval ``(mean, low, high)`` of per-seed differences between two methods (the
    quantile of the nearest tabulated degrees of freedom at or below ``n - 1``, so never too narrow; NaN bounds for
    fewer than 2)."""
    n = len(diffs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, math.nan, math.nan
    t = _T975[max(k for k in _T975 if k <= n - 1)] if n - 1 <= max(_T975) else 1.96
    half = t * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


__all__ = ["RESULTS_FILE", "BadResultsFile", "base_to_novel", "find_results", "harmonic_mean", "paired_interval",
           "read_result_file", "write_results"]
