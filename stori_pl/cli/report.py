"""`stori report RUN_DIRS...`: test accuracies of runs, over seeds, in the layout of SToRI's Table 2.

Every ``stori test`` (and ``stori fit``, which tests the selected checkpoint) writes
``test_results.json`` into its run folder; this command collects them (searching the given folders
recursively), groups by method × shots (rows) and dataset (columns) and prints mean±std over seeds
in percent, with an AVG column, as Markdown; ``--csv`` also writes the numbers as CSV.

Example::

    stori report runs/ --csv table2.csv --markdown table2.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from stori_pl.utils import atomic_write

RESULTS_FILE = "test_results.json"
DATASET_ORDER = ["ImageNet", "Caltech101", "DTD", "Flowers102", "Food101", "SUN397"]
METHOD_ORDER = ["Zero-shot CLIP", "CuPL", "CuPL + templates", "TaskRes", "TaskRes (CuPL init)", "SToRI"]
TRAINED_NOTHING = ("ZeroShotCLIP",)  # methods whose result does not depend on the shots


def find_results(paths: list[str]) -> list[Path]:
    """``test_results.json`` files given directly or found under the given folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob(RESULTS_FILE))
        else:
            raise FileNotFoundError(f"{p}: no such run folder or results file")
    return found


def load_results(files: list[Path], metric: str) -> dict[tuple[str, int, str], dict[int | None, float]]:
    """``{(method, shots, dataset): {seed: value}}``; a later file (by mtime) wins for the same seed."""
    table: dict[tuple[str, int, str], dict] = defaultdict(dict)
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        try:
            r = json.loads(path.read_text(encoding="utf-8"))
            value = r["metrics"][metric]
        except (json.JSONDecodeError, KeyError) as err:
            print(f"stori report: skipping {path}: no {metric!r} ({err.__class__.__name__}: {err})", file=sys.stderr)
            continue
        shots = 0 if r.get("method") in TRAINED_NOTHING else int(r.get("shots") or 0)
        key = (r.get("method_name") or r.get("method") or "?", shots, r.get("dataset") or "?")
        seed = r.get("seed")
        if seed in table[key]:
            print(f"stori report: {key} seed {seed} appears twice; using {path}", file=sys.stderr)
        table[key][seed] = float(value)
    return table


def _order(values: set[str], preferred: list[str]) -> list[str]:
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def summarize(table: dict) -> tuple[list[str], list[dict]]:
    """Columns (datasets) and rows ``{method, shots, cells: {dataset: (mean, std, n)}, avg}`` in percent."""
    datasets = _order({k[2] for k in table}, DATASET_ORDER)
    keys = {(k[0], k[1]) for k in table}
    methods = _order({m for m, _ in keys}, METHOD_ORDER)
    rows = []
    for method in methods:
        for shots in sorted(s for m, s in keys if m == method):
            cells = {}
            for ds in datasets:
                vals = [100 * v for v in table.get((method, shots, ds), {}).values()]
                if vals:
                    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    cells[ds] = (statistics.fmean(vals), std, len(vals))
            avg = statistics.fmean(c[0] for c in cells.values()) if len(cells) == len(datasets) else math.nan
            rows.append({"method": method, "shots": shots, "cells": cells, "avg": avg})
    return datasets, rows


def to_markdown(datasets: list[str], rows: list[dict]) -> str:
    """Table 2 layout: one row per method × shots, mean±std (%) per dataset, AVG of the means."""
    head = ["Method", "Shots", *datasets, "AVG"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---:"] + ["---:"] * (len(datasets) + 1)) + "|"]
    for r in rows:
        cells = [f"{r['cells'][d][0]:.1f}±{r['cells'][d][1]:.1f}" if d in r["cells"] else "–" for d in datasets]
        avg = "–" if math.isnan(r["avg"]) else f"{r['avg']:.1f}"
        lines.append("| " + " | ".join([r["method"], str(r["shots"]), *cells, avg]) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: str, datasets: list[str], rows: list[dict]) -> None:
    """Same table with separate mean / std / number-of-seeds columns."""
    header = ["method", "shots"] + [f"{d}_{x}" for d in datasets for x in ("mean", "std", "n")] + ["avg"]
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            vals = []
            for d in datasets:
                mean, std, n = r["cells"].get(d, (math.nan, math.nan, 0))
                vals += [f"{mean:.4f}", f"{std:.4f}", n]
            w.writerow([r["method"], r["shots"], *vals, f"{r['avg']:.4f}"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stori report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (searched recursively) or test_results.json files")
    parser.add_argument("--metric", default="test/acc", help="metric to tabulate (default: test/acc)")
    parser.add_argument("--csv", help="also write the table as CSV to this file")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    try:
        files = find_results(args.runs)
    except FileNotFoundError as err:
        print(f"stori report: {err}", file=sys.stderr)
        return 2
    table = load_results(files, args.metric)
    if not table:
        print(f"stori report: no {RESULTS_FILE} with {args.metric!r} under {', '.join(args.runs)} "
              "(run `stori fit` or `stori test` first)", file=sys.stderr)
        return 1
    datasets, rows = summarize(table)
    text = to_markdown(datasets, rows)
    print(text, end="")
    if args.markdown:
        with atomic_write(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    if args.csv:
        write_csv(args.csv, datasets, rows)
    return 0
