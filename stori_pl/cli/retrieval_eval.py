"""Preference retrieval with weighted attributes: AP / P@k of the emphasized attribute (Table 3, Figs. 4-5).

Example config (``retrieval_celeba.yaml``)::

    dataset: celeba
    root: /data            # holds celeba/list_attr_celeba.txt and celeba/img_align_celeba/
    model: ViT-L-14
    pretrained: openai
    weights: [0.5, 1.5]
    top_k: [10]
    methods: [stori, prompt_weighting]
    sweep: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    out_dir: runs/retrieval_celeba
    tasks:                 # optional; default: stori_pl.retrieval.runner.DEFAULT_TASKS[dataset]
      - attributes: [Blond_Hair, Eyeglasses, Smiling]
        prompt: "a photo of a {2} person with {0} wearing {1}."
        phrases: [blond hair, eyeglasses, smiling]

Run ``stori retrieval-eval --config retrieval_celeba.yaml`` (any option can be overridden on the command line).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from stori_pl.retrieval.attributes import AttributeTask, load_attributes
from stori_pl.retrieval.runner import DEFAULT_TASKS, format_report_table, run_preference_retrieval
from stori_pl.toy.data import load_toy_attributes
from stori_pl.utils import atomic_write


# List defaults (never mutated) rather than tuples: jsonargparse's `--weights+ 2.0` appends to a list default.
def retrieval_eval(root: Path, dataset: str = "celeba", model: str = "ViT-L-14", pretrained: str | None = "openai",
                   start_block: int = 7, per_category: int | None = 100, seed: int = 0,
                   weights: list[float] = [0.5, 1.5], top_k: list[int] = [10],  # noqa: B006
                   methods: list[Literal["stori", "prompt_weighting"]] = ["stori"],  # noqa: B006
                   sweep: list[float] | None = None, tasks: list[AttributeTask] | None = None,
                   out_dir: Path | None = None, tensorboard: bool = False, cache_dir: str | None = None,
                   device: str = "cpu", batch_size: int = 64) -> int:
    """Run the preference-retrieval evaluation and print its table (mean ± std over tasks and attributes).

    Args:
        root: Dataset folder (layouts: docs/retrieval.md).
        dataset: celeba | cub | csv (images + attributes.csv) | toy (the toy world, written when absent).
        model: open_clip model name.
        pretrained: open_clip tag, local checkpoint file, builtin (stori-toy) or null (random weights).
        start_block: First reweighted block (1-indexed).
        per_category: Images sampled per attribute combination (null: all).
        seed: Pool sampling seed.
        weights: Weights of the target attribute compared with the plain prompt.
        top_k: k values of P@k.
        methods: stori and/or prompt_weighting.
        sweep: Weights for the AUC-vs-weight figure (null: no sweep).
        tasks: Attribute triples and prompt templates (null: the dataset's default tasks).
        out_dir: Write report.json, table.md and the PNG figures here.
        tensorboard: Also log the figures to <out_dir>/tensorboard.
        cache_dir: Feature cache folder (default: $STORI_CACHE or ~/.cache/stori_pl).
        device: Torch device.
        batch_size: Images per encoder call.

    Returns:
        Exit status 0.

    Raises:
        ValueError: No default tasks for the dataset, --tensorboard without --out_dir, a bad dataset layout.
        KeyError: An attribute name that the dataset does not have (the message lists close names).
    """
    tasks = default_tasks(dataset) if tasks is None else tasks
    if tensorboard and out_dir is None:
        raise ValueError("--tensorboard true needs --out_dir")
    ds = load_attributes(dataset, root, loaders={"toy": load_toy_attributes})
    with tensorboard_writer(out_dir / "tensorboard" if tensorboard else None) as logger:
        report = run_preference_retrieval(
            ds, tasks, model, pretrained, start_block=start_block, per_category=per_category, seed=seed,
            weights=weights, top_k=top_k, methods=methods, sweep=sweep, out_dir=out_dir, cache_dir=cache_dir,
            device=device, batch_size=batch_size, logger=logger)
    table = format_report_table(report)
    print(table)
    if out_dir is not None:
        write_text(out_dir / "table.md", table + "\n")
        print(f"\nreport, table and figures in {out_dir}")
    return 0


@contextmanager
def tensorboard_writer(log_dir: Path | None):
    """A TensorBoard ``SummaryWriter`` on ``log_dir`` (closed afterwards), or None without a folder."""
    if log_dir is None:
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        yield writer
    finally:
        writer.close()


def default_tasks(dataset: str) -> list[AttributeTask]:
    """The default attribute triples of ``dataset`` (:data:`stori_pl.retrieval.runner.DEFAULT_TASKS`)."""
    if dataset not in DEFAULT_TASKS:
        raise ValueError(f"--tasks is required for dataset {dataset!r} (defaults exist for {list(DEFAULT_TASKS)})")
    return DEFAULT_TASKS[dataset]


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
