"""Test accuracies of runs, mean ± std over seeds, in the layout of SToRI's Table 2 (Markdown, CSV).

Every ``stori test`` (and ``stori fit``, which tests the selected checkpoint) writes
``test_results.json`` into its run folder; this command collects them (searching the given folders
recursively), groups by method × shots (rows) and dataset (columns) and prints mean±std over seeds
in percent, with an AVG column, as Markdown; ``--csv`` also writes the numbers as CSV.

Runs on a class subset (``--data.subsample_classes base|new``) get their own columns (``DTD (base)``).
``--base_to_novel true`` prints CoCoOp's base-to-novel table instead: per method, shots and dataset the base
and new accuracies and their harmonic mean HM (from the runs trained with ``subsample_classes: base``, whose
``test_results.json`` holds both).

Examples::

    stori report runs/ --csv table2.csv --markdown table2.md
    stori report runs/ --base_to_novel true
    stori report runs/ --paired_to SToRI        # + each method's paired difference to SToRI, 95 % CI

``--paired_to METHOD`` adds, per method, shots and dataset, the mean difference to METHOD over the seeds both ran
and its paired 95 % t interval (the seeds share the few-shot images, so the pairing removes their variance).
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import Counter, defaultdict
from csv import writer as csv_writer
from pathlib import Path
from typing import NamedTuple

from stori_pl.cli.common import command_parser, parameter_help, run_function
from stori_pl.lightning.results import (
    RESULTS_FILE,
    BadResultsFile,
    find_results,
    harmonic_mean,
    paired_interval,
    read_result_file,
)
from stori_pl.utils import atomic_write

DATASET_ORDER = ["ImageNet", "Caltech101", "DTD", "Flowers102", "Food101", "SUN397"]
METHOD_ORDER = ["Zero-shot CLIP", "CuPL", "CuPL + templates", "Linear probe", "CoOp", "Tip-Adapter", "Tip-Adapter-F",
                "TaskRes (Base)", "TaskRes (Base+CuPL)", "SToRI"]
TRAINED_NOTHING = ("ZeroShotCLIP",)  # methods whose result does not depend on the shots


class Run(NamedTuple):
    """One test result: the metric, the run's wall time (s; NaN when not recorded) and the tested checkpoint."""

    value: float
    wall_s: float
    test_ckpt: str


def load_results(files: list[Path], metric: str) -> dict[tuple[str, int, str], dict[int | None, Run]]:
    """``{(method, shots, dataset): {seed: Run}}``; a later file (by mtime) wins for the same seed."""
    table: dict[tuple[str, int, str], dict] = defaultdict(dict)
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        try:
            r = read_result(path, metric)
        except BadResultsFile as err:
            print(f"stori report: skipping {path}: {err}", file=sys.stderr)
            continue
        key, seed = (r["name"], r["shots"], r["dataset"]), r["seed"]
        if seed in table[key] and table[key][seed].value != r["value"]:  # zero-shot repeats per shots: same value
            print(f"stori report: {key} seed {seed} appears twice; using {path}", file=sys.stderr)
        table[key][seed] = Run(r["value"], r["wall_s"], r["test_ckpt"])
    return table


def _text(value, default: str = "?") -> str:
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != "" \
        else default


def read_result(path: Path, metric: str) -> dict:
    """One ``test_results.json`` as ``{name, shots, dataset, seed, value, wall_s, test_ckpt}``.

    Raises:
        BadResultsFile: The file is not UTF-8 JSON, not an object, has no numeric ``metrics[metric]``, or holds
            values of the wrong type (shots that are not a whole number, a seed that is a list, ...).
    """
    r = read_result_file(path)
    metrics = r.get("metrics")
    value = metrics.get(metric) if isinstance(metrics, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadResultsFile(f"no numeric {metric!r} in its metrics (found {str(value)[:40]!r})")
    shots, seed, wall = r.get("shots"), r.get("seed"), r.get("wall_time_s", math.nan)
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, (int, float)) or shots != int(shots)):
        raise BadResultsFile(f"shots {str(shots)[:40]!r} is not a whole number")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, str))):
        raise BadResultsFile(f"seed {str(seed)[:40]!r} is not a number")
    wall, base, new = (float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan
                       for x in (wall, r.get("base_acc", value), r.get("new_acc")))
    dataset, subsample = _text(r.get("dataset")), _text(r.get("subsample_classes"), "all")
    return {"name": _text(r.get("method_name"), _text(r.get("method"))),
            "shots": 0 if r.get("method") in TRAINED_NOTHING else int(shots or 0),
            "dataset": dataset if subsample == "all" else f"{dataset} ({subsample})",
            "seed": seed, "value": float(value), "wall_s": wall, "test_ckpt": _text(r.get("test_ckpt")),
            "raw_dataset": dataset, "subsample": subsample, "base_acc": base, "new_acc": new}


def _order(values: set[str], preferred: list[str]) -> list[str]:
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def summarize(table: dict) -> tuple[list[str], list[dict]]:
    """Columns (datasets) and rows ``{method, shots, cells: {dataset: (mean, std, n, wall_s)}, avg}`` in percent
    (``wall_s``: mean wall time of one run)."""
    datasets = _order({k[2] for k in table}, DATASET_ORDER)
    keys = {(k[0], k[1]) for k in table}
    methods = _order({m for m, _ in keys}, METHOD_ORDER)
    rows = []
    for method in methods:
        for shots in sorted(s for m, s in keys if m == method):
            cells = {}
            for ds in datasets:
                runs = list(table.get((method, shots, ds), {}).values())
                vals = [100 * r.value for r in runs]
                if vals:
                    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    cells[ds] = (statistics.fmean(vals), std, len(vals), statistics.fmean(r.wall_s for r in runs))
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


def paired_rows(table: dict, reference: str) -> list[dict]:
    """Each method's paired difference to ``reference`` (points), per shots and dataset, over the seeds both ran.

    Returns:
        Rows ``{method, shots, dataset, diff: (mean, low, high), n}`` (95 % t interval of the per-seed
        differences, :func:`~stori_pl.lightning.results.paired_interval`), in Table 2's method order; cells without a
        ``reference`` run at the same shots and dataset, or without a common seed, are left out.
    """
    methods = _order({k[0] for k in table}, METHOD_ORDER)
    rows = []
    for method, shots, ds in sorted(table, key=lambda k: (methods.index(k[0]), k[1], k[2])):
        ref = table.get((reference, shots, ds), {})
        seeds = [s for s in table[(method, shots, ds)] if s in ref]
        if method == reference or not seeds:
            continue
        diffs = [100 * (table[(method, shots, ds)][s].value - ref[s].value) for s in seeds]
        rows.append({"method": method, "shots": shots, "dataset": ds, "diff": paired_interval(diffs), "n": len(seeds)})
    return rows


def paired_markdown(rows: list[dict], reference: str) -> str:
    """One row per method × shots × dataset: mean paired difference to ``reference`` and its 95 % interval."""
    lines = ["", f"Paired difference to {reference} (points, same seeds; 95 % t interval):", "",
             f"| Method | Shots | Dataset | Δ to {reference} | 95 % CI | Seeds |", "|---|---:|---|---:|---|---:|"]
    for r in rows:
        mean, low, high = r["diff"]
        ci = "–" if math.isnan(low) else f"[{low:+.1f}, {high:+.1f}]"
        lines.append(f"| {r['method']} | {r['shots']} | {r['dataset']} | {mean:+.1f} | {ci} | {r['n']} |")
    return "\n".join(lines) + "\n"


def tested_note(table: dict) -> str:
    """Which model the tests used, e.g. ``Tested: the weights after the last epoch (18 runs).``"""
    counts = Counter(run.test_ckpt for seeds in table.values() for run in seeds.values())
    words = {"last": "the weights after the last epoch", "best": "the checkpoint selected on val",
             "given": "a checkpoint given with --ckpt_path", "?": "not recorded"}
    return "\nTested: " + "; ".join(f"{words.get(k, k)} ({n} runs)" for k, n in sorted(counts.items())) + ".\n"


def write_csv(path: str, datasets: list[str], rows: list[dict]) -> None:
    """Same table with separate mean / std / number-of-seeds / wall-time-per-run columns."""
    header = ["method", "shots"] + [f"{d}_{x}" for d in datasets for x in ("mean", "std", "n", "wall_s")] + ["avg"]
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        w = csv_writer(f)
        w.writerow(header)
        for r in rows:
            vals = []
            for d in datasets:
                mean, std, n, wall = r["cells"].get(d, (math.nan, math.nan, 0, math.nan))
                vals += [f"{mean:.4f}", f"{std:.4f}", n, f"{wall:.1f}"]
            w.writerow([r["method"], r["shots"], *vals, f"{r['avg']:.4f}"])


def load_base_to_novel(files: list[Path]) -> dict[tuple[str, int, str], dict]:
    """``{(method, shots, dataset): {seed: (base, new)}}`` of the runs tested on the base classes (``new`` is NaN
    where the method cannot classify new classes); a later file (by mtime) wins for the same seed."""
    table: dict[tuple[str, int, str], dict] = defaultdict(dict)
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        try:
            r = read_result(path, "test/acc")
        except BadResultsFile as err:
            print(f"stori report: skipping {path}: {err}", file=sys.stderr)
            continue
        if r["subsample"] != "base":
            continue
        key = (r["name"], r["shots"], r["raw_dataset"])
        table[key][r["seed"]] = (r["base_acc"], r["new_acc"])
    return table


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def base_to_novel_rows(table: dict) -> list[dict]:
    """Rows ``{method, shots, dataset, base, new, hm, n}`` in percent: ``base``/``new`` = (mean, std) over seeds,
    ``hm`` = (HM of the mean base and mean new accuracy as in CoCoOp's tables, std of the per-seed HMs)."""
    rows = []
    methods = _order({k[0] for k in table}, METHOD_ORDER)
    for key in sorted(table, key=lambda k: (methods.index(k[0]), k[1], _order({k[2]}, DATASET_ORDER)[0])):
        runs = list(table[key].values())
        base, new = _mean_std([100 * b for b, _ in runs]), _mean_std([100 * n for _, n in runs])
        hms = [100 * harmonic_mean(b, n) for b, n in runs]
        hm = (harmonic_mean(base[0], new[0]), _mean_std(hms)[1])
        rows.append({"method": key[0], "shots": key[1], "dataset": key[2], "base": base, "new": new, "hm": hm,
                     "n": len(runs)})
    return rows


def base_to_novel_markdown(rows: list[dict]) -> str:
    """One row per method × shots × dataset: base, new, HM (mean±std %) and the number of seeds."""
    lines = ["| Method | Shots | Dataset | Base | New | HM | Seeds |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        cells = ["–" if math.isnan(r[k][0]) else f"{r[k][0]:.1f}±{r[k][1]:.1f}" for k in ("base", "new", "hm")]
        lines.append(f"| {r['method']} | {r['shots']} | {r['dataset']} | " + " | ".join(cells) + f" | {r['n']} |")
    return "\n".join(lines) + "\n"


def report_base_to_novel(files: list[Path], runs: list[str], csv: Path | None, markdown: Path | None) -> int:
    """``stori report --base_to_novel true``: print (and write) the base / new / HM table."""
    table = load_base_to_novel(files)
    if not table:
        print(f"stori report: no {RESULTS_FILE} of a run on the base classes under {', '.join(runs)} (train with "
              "--data.subsample_classes base)", file=sys.stderr)
        return 1
    rows = base_to_novel_rows(table)
    text = base_to_novel_markdown(rows)
    print(text, end="")
    if markdown is not None:
        with atomic_write(markdown, "w", encoding="utf-8") as f:
            f.write(text)
    if csv is not None:
        with atomic_write(csv, "w", newline="", encoding="utf-8") as f:
            w = csv_writer(f)
            w.writerow(["method", "shots", "dataset", "base_mean", "base_std", "new_mean", "new_std", "hm", "hm_std", "n"])
            for r in rows:
                w.writerow([r["method"], r["shots"], r["dataset"], *(f"{x:.4f}" for k in ("base", "new", "hm")
                                                                     for x in r[k]), r["n"]])
    return 0


def report(runs: list[str], metric: str = "test/acc", csv: Path | None = None, markdown: Path | None = None,
           base_to_novel: bool = False, paired_to: str | None = None) -> int:
    """Print the Table-2 summary of the test results found under ``runs``.

    Args:
        runs: Run folders (searched recursively for test_results.json) or test_results.json files.
        metric: Metric to tabulate.
        csv: Also write the table as CSV (mean, std, number of seeds per dataset) to this file.
        markdown: Also write the Markdown table to this file.
        base_to_novel: Print CoCoOp's base-to-novel table instead (base, new and harmonic-mean accuracy of the
            runs trained on the base classes, mean ± std over seeds).
        paired_to: Also print each method's paired difference to this method (its name in the table, e.g.
            ``SToRI``) with a 95 % t interval over the seeds both ran.

    Returns:
        Exit status 0, or 1 when no result holds ``metric``.

    Raises:
        FileNotFoundError: A run folder or file that does not exist.
    """
    files = find_results(runs)
    if base_to_novel:
        return report_base_to_novel(files, runs, csv, markdown)
    table = load_results(files, metric)
    if not table:
        print(f"stori report: no {RESULTS_FILE} with {metric!r} under {', '.join(runs)} "
              "(run `stori fit` or `stori test` first)", file=sys.stderr)
        return 1
    datasets, rows = summarize(table)
    text = to_markdown(datasets, rows) + tested_note(table)
    if paired_to is not None:
        if not any(k[0] == paired_to for k in table):
            names = sorted({k[0] for k in table})
            raise ValueError(f"--paired_to {paired_to!r}: no such method in the results (methods: {', '.join(names)})")
        text += paired_markdown(paired_rows(table, paired_to), paired_to)
    print(text, end="")
    if markdown is not None:
        with atomic_write(markdown, "w", encoding="utf-8") as f:
            f.write(text)
    if csv is not None:
        write_csv(csv, datasets, rows)
    return 0


def build_parser():
    """Command-line options of ``stori report`` (from :func:`report`'s signature and docstring)."""
    p = command_parser("stori report", __doc__)
    p.add_argument("runs", nargs="+", type=str, help=parameter_help(report, "runs"))
    p.add_function_arguments(report, skip={"runs"})
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``stori report``; returns the exit status."""
    return run_function(report, build_parser(), argv)
