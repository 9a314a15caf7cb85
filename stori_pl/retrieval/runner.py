"""Preference-retrieval evaluation (SToRI Table 3, Figures 4–5): does weighting an attribute in the query
retrieve more images that have it?

For each task (three binary attributes + a prompt mentioning all three) the runner samples the pool of the
8 attribute combinations (:func:`stori_pl.retrieval.attributes.build_pool`), encodes the images once (feature
cache), and for each attribute of the triple ranks the pool with the plain prompt and with that attribute's
phrase weighted (``0.5`` and ``1.5`` by default): AP and P@k with the attribute as the positive label,
mean ± std over all (task, attribute) pairs and the Δs against the plain prompt. Optionally it sweeps the
weight and records the AUC of each category's ratio-retrieved curve for each weighting method.

The default tasks follow the structure of the paper's Tables 9 (CelebA) and 10 (CUB); the attribute triples
and wordings are ours, so pass your own ``tasks`` to reproduce a particular table exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from stori_pl.retrieval import metrics as R
from stori_pl.retrieval.attributes import AttributeDataset, AttributeTask, build_pool
from stori_pl.text.syntax import escape_prompt
from stori_pl.utils import write_json
from stori_pl.data.features import image_features
from stori_pl.text.clip import load_clip
from stori_pl.text.encoder import WeightedTextEncoder
from stori_pl.text.prompt_weighting import METHODS, encode_weighted

__all__ = ["AttributeTask", "DEFAULT_TASKS", "task_prompt", "run_preference_retrieval", "format_report_table"]


DEFAULT_TASKS: dict[str, list[AttributeTask]] = {
    "celeba": [
        AttributeTask(["Blond_Hair", "Eyeglasses", "Smiling"], "a photo of a {2} person with {0} wearing {1}.",
                      ["blond hair", "eyeglasses", "smiling"]),
        AttributeTask(["Black_Hair", "Wearing_Hat", "Mustache"], "a photo of a person with {0} and a {2}, wearing a {1}.",
                      ["black hair", "hat", "mustache"]),
        AttributeTask(["Wavy_Hair", "Wearing_Necklace", "Wearing_Lipstick"],
                      "a photo of a person with {0}, wearing {2} and a {1}.", ["wavy hair", "necklace", "lipstick"]),
    ],
    "cub": [
        AttributeTask(["has_wing_color::black", "has_breast_color::yellow", "has_bill_shape::cone"],
                      "a photo of a bird with {0}, a {1} and a {2}.", ["black wings", "yellow breast", "cone-shaped bill"]),
        AttributeTask(["has_crown_color::red", "has_primary_color::white", "has_size::small_(5_-_9_in)"],
                      "a photo of a {2} {1} bird with a {0}.", ["red crown", "white", "small"]),
    ],
}


def task_prompt(task: AttributeTask, target: int | None = None, weight: float = 1.0) -> str:
    """The task's prompt in the weight syntax, with phrase ``target`` weighted by ``weight`` (None: plain)."""
    words = [escape_prompt(w) for w in task.words()]
    if target is not None:
        words[target] = f"({words[target]}:{weight:g})"
    try:
        return escape_prompt(task.prompt).format(*words)  # braces survive escaping; parentheses become literal
    except (IndexError, KeyError) as e:
        raise ValueError(f"prompt template {task.prompt!r} must use {{0}}..{{{len(words) - 1}}} ({e})") from None


def _mean_std(values: Sequence[float]) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    return [float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0]


@dataclass
class _Scorer:
    """Scores a task's image pool against weighted prompts with one CLIP text encoder."""

    encoder: Any  # WeightedTextEncoder
    tokenizer: Any
    features: torch.Tensor  # [M, D] pool image features

    def __call__(self, texts: Sequence[str], method: str) -> torch.Tensor:
        """Cosine scores ``[M, S]`` of the pool against ``S`` prompts in the weight syntax."""
        return self.features @ encode_weighted(self.encoder, list(texts), self.tokenizer, method).T.cpu()


@dataclass
class _Protocol:
    """What is measured for each (task, attribute) and where its figures go."""

    weights: Sequence[float]
    top_k: Sequence[int]
    methods: Sequence[str]
    sweep: Sequence[float] | None
    out: Path | None
    logger: Any


def run_preference_retrieval(
    dataset: AttributeDataset, tasks: Sequence[AttributeTask], clip_model: str, pretrained: str | None, *,
    start_block: int = 7, per_category: int | None = 100, seed: int = 0, weights: Sequence[float] = (0.5, 1.5),
    top_k: Sequence[int] = (10,), methods: Sequence[str] = ("stori",), sweep: Sequence[float] | None = None,
    out_dir: str | Path | None = None, cache_dir: str | Path | None = None, device: str = "cpu",
    batch_size: int = 64, logger=None,
) -> dict:
    """Run the Table-3 evaluation (and, with ``sweep``, the Figure-5 AUC sweep).

    Args:
        dataset: Attribute dataset (:func:`stori_pl.retrieval.attributes.load_attributes`).
        tasks: Attribute triples with prompt templates.
        clip_model, pretrained: CLIP to evaluate (as for :func:`stori_pl.load_clip`).
        start_block: First reweighted block (SToRI) / block whose input is reweighted (prompt weighting).
        per_category: Images sampled per attribute combination (None = all).
        seed: Pool sampling seed.
        weights: Weights of the target attribute compared with the plain prompt (Table 3: 0.5 and 1.5).
        top_k: ``k`` values for P@k.
        methods: ``"stori"`` and/or ``"prompt_weighting"`` (App. C.1).
        sweep: Weights for the AUC-vs-weight curves (Figure 5); None skips them.
        out_dir: Where to save ``report.json`` and the PNG figures (None: nothing written).
        cache_dir: Image-feature cache folder.
        device: Torch device for CLIP.
        batch_size: Images per encoder call.
        logger: TensorBoard ``SummaryWriter`` / Lightning logger to receive the figures.

    Returns:
        Report dict: ``rows`` (one per task, attribute, method, weight), ``summary`` (method → setting →
        metric → [mean, std], settings ``plain``, ``w=0.5``, ``Δw=0.5``, …), ``auc`` (sweep results), ``figures``.
    """
    _validate(dataset, tasks, methods)
    model, _, tokenizer = load_clip(clip_model, pretrained, device=device)
    encoder = WeightedTextEncoder(model, start_block=start_block)
    protocol = _Protocol(weights, top_k, methods, sweep, Path(out_dir) if out_dir is not None else None, logger)
    rows, auc_report, figures = [], [], []
    for t, task in enumerate(tasks):
        pool, cats = build_pool(dataset, task.attributes, per_category, seed)
        feats, kept = image_features([dataset.paths[i] for i in pool], clip_model, pretrained, cache_dir=cache_dir,
                                     batch_size=batch_size, device=device, skip_bad_images=True, progress=False)
        scorer = _Scorer(encoder, tokenizer, feats)
        task_rows, task_aucs, task_figures = _evaluate_task(protocol, scorer, dataset, t, task,
                                                            [pool[i] for i in kept], cats[kept])
        rows += task_rows
        auc_report += task_aucs
        figures += task_figures
    config = {"clip_model": clip_model, "pretrained": pretrained, "dataset": dataset.name, "start_block": start_block,
              "per_category": per_category, "seed": seed, "weights": list(weights), "top_k": list(top_k),
              "methods": list(methods), "tasks": [asdict(t) for t in tasks]}
    report = {"config": config, "rows": rows, "summary": _summarize(rows, methods, weights, top_k), "auc": auc_report,
              "figures": figures}
    if protocol.out is not None:
        write_json(protocol.out / "report.json", report)
    return report


def _evaluate_task(protocol: _Protocol, scorer: _Scorer, dataset: AttributeDataset, t: int, task: AttributeTask,
                   pool: list[int], cats: torch.Tensor) -> tuple[list[dict], list[dict], list[str]]:
    """Task ``t`` on its encoded pool: each attribute in turn is the target.

    Args:
        pool: ``M`` dataset indices of the readable pool images (the rows of ``scorer.features``).
        cats: ``[M]`` category id of each.

    Returns:
        ``(rows, auc entries, PNG file names)`` as in the report of :func:`run_preference_retrieval`.
    """
    rows, auc_report, figures = [], [], []
    for a, attr in enumerate(task.attributes):
        labels = dataset.labels[pool, dataset.index(attr)]  # [M] bool
        target = {"task": t, "attribute": attr}
        new_rows, curves = _score_attribute(scorer, task, a, labels, cats, protocol.weights, protocol.top_k,
                                            protocol.methods)
        rows += [{**target, **row} for row in new_rows]
        aucs = _sweep_aucs(scorer, task, a, cats, protocol.sweep, protocol.methods) if protocol.sweep else None
        if aucs is not None:
            auc_report.append({**target, "weights": list(protocol.sweep),
                               "categories": R.category_names(task.attributes),
                               "auc": {m: v.tolist() for m, v in aucs.items()}})
        if protocol.out is not None or protocol.logger is not None:
            figures += _attribute_figures(t, task, attr, curves, protocol.sweep, aucs, protocol.out, protocol.logger)
    return rows, auc_report, figures


def _validate(dataset: AttributeDataset, tasks: Sequence[AttributeTask], methods: Sequence[str]) -> None:
    """Check the methods, every task's attributes and prompt template before any encoding."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    for task in tasks:
        for attr in task.attributes:
            dataset.index(attr)
        task_prompt(task)


def _score_attribute(scorer: _Scorer, task: AttributeTask, a: int, labels: torch.Tensor, cats: torch.Tensor,
                     weights: Sequence[float], top_k: Sequence[int], methods: Sequence[str]):
    """Rank the pool with the plain prompt and with attribute ``a`` weighted by each of ``weights``.

    Args:
        labels: ``[M]`` bool, the pool images that have the attribute.
        cats: ``[M]`` category id of each pool image.

    Returns:
        ``(rows, curves)``: one row per (method, weight) with the prompt, AP and P@k; ratio curves
        ``[C, M]`` of the first method per setting (``"plain"``, ``"w=0.5"``, ...).
    """
    settings = [1.0] + [float(w) for w in weights]
    n_cats = 2 ** len(task.attributes)
    rows, curves = [], {}
    for method in methods:
        texts = [task_prompt(task, None if w == 1.0 else a, w) for w in settings]
        scores = scorer(texts, method)  # [M, S]
        for s, w in enumerate(settings):
            row = {"method": method, "weight": w, "prompt": texts[s], "AP": R.average_precision(scores[:, s], labels)}
            row.update({f"P@{k}": R.precision_at_k(scores[:, s], labels, k) for k in top_k})
            rows.append(row)
            if method == methods[0]:
                curves["plain" if w == 1.0 else f"w={w:g}"] = R.category_ratio_curves(scores[:, s], cats, n_cats)
    return rows, curves


def _sweep_aucs(scorer: _Scorer, task: AttributeTask, a: int, cats: torch.Tensor, sweep: Sequence[float],
                methods: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per method, the AUC ``[W, C]`` of each category's ratio curve with attribute ``a`` weighted by each of
    the ``W`` weights of ``sweep`` (Figure 5)."""
    n_cats = 2 ** len(task.attributes)
    aucs = {}
    for method in methods:
        scores = scorer([task_prompt(task, a, w) for w in sweep], method)  # [M, W]
        aucs[method] = torch.stack([R.curve_auc(R.category_ratio_curves(scores[:, j], cats, n_cats))
                                    for j in range(len(sweep))])  # [W, C]
    return aucs


def _attribute_figures(t: int, task: AttributeTask, attr: str, curves: dict, sweep, aucs, out: Path | None,
                       logger) -> list[str]:
    """Plot the ratio curves (and the AUC sweep), log them and/or save them as PNGs in ``out``.

    Returns:
        The PNG file names written (relative to ``out``).
    """
    names = R.category_names(task.attributes)
    title = f"{task_prompt(task)}  — target: {attr}"
    figs = [(f"ratio_t{t}_{attr}", R.plot_ratio_curves(dict(sorted(curves.items())), names, title))]
    if aucs is not None:
        figs.append((f"auc_t{t}_{attr}", R.plot_auc_vs_weight(sweep, aucs, names, title)))
    written = []
    for tag, fig in figs:
        tag = "".join(c if c.isalnum() or c in "_-=." else "_" for c in tag)
        if logger is not None:
            R.log_figure(logger, f"retrieval/{tag}", fig)
        if out is not None:
            R.save_figure(fig, out / f"{tag}.png")
            written.append(f"{tag}.png")
        else:
            R.close_figure(fig)
    return written


def _summarize(rows: list[dict], methods, weights, top_k) -> dict:
    metrics = ["AP"] + [f"P@{k}" for k in top_k]
    summary = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        plain = {(r["task"], r["attribute"]): r for r in mine if r["weight"] == 1.0}
        block = {"plain": {m: _mean_std([r[m] for r in plain.values()]) for m in metrics}}
        for w in weights:
            at = [r for r in mine if r["weight"] == float(w)]
            block[f"w={w:g}"] = {m: _mean_std([r[m] for r in at]) for m in metrics}
            block[f"Δw={w:g}"] = {m: _mean_std([r[m] - plain[(r["task"], r["attribute"])][m] for r in at]) for m in metrics}
        summary[method] = block
    return summary


def format_report_table(report: dict) -> str:
    """Markdown table like the paper's Table 3 (mean ± std over tasks × attributes, in %)."""
    summary = report["summary"]
    metrics = list(next(iter(next(iter(summary.values())).values())))
    lines = ["| method | setting | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for method, block in summary.items():
        for setting, vals in block.items():
            cells = [f"{100 * m:+.1f} ± {100 * s:.1f}" if setting.startswith("Δ") else f"{100 * m:.1f} ± {100 * s:.1f}"
                     for m, s in (vals[k] for k in metrics)]
            lines.append(f"| {method} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
