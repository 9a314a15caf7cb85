"""``stori retrieval-eval``: the preference-retrieval evaluation (SToRI Table 3, Figures 4–5).

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

import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from stori_pl.retrieval.attributes import AttributeTask


def build_parser() -> ArgumentParser:
    """Options of ``stori retrieval-eval``."""
    p = ArgumentParser(prog="stori retrieval-eval", description="Preference retrieval with weighted attributes (Table 3).")
    p.add_argument("--config", action=ActionConfigFile, help="YAML/JSON file with any of the options below.")
    p.add_argument("--dataset", type=str, default="celeba", help="celeba | cub | csv (images + attributes.csv).")
    p.add_argument("--root", type=Path, required=True, help="Dataset folder (see docs: layouts).")
    p.add_argument("--model", type=str, default="ViT-L-14", help="open_clip model name.")
    p.add_argument("--pretrained", type=str | None, default="openai", help="open_clip tag, local file, or null.")
    p.add_argument("--start-block", type=int, default=7, help="First reweighted block (1-indexed).")
    p.add_argument("--per-category", type=int | None, default=100, help="Images per attribute combination (null: all).")
    p.add_argument("--seed", type=int, default=0, help="Pool sampling seed.")
    p.add_argument("--weights", type=list[float], default=[0.5, 1.5], help="Weights of the target attribute.")
    p.add_argument("--top-k", type=list[int], default=[10], help="k of P@k.")
    p.add_argument("--methods", type=list[str], default=["stori"], help="stori and/or prompt_weighting.")
    p.add_argument("--sweep", type=list[float] | None, default=None, help="Weights for the AUC-vs-weight figure.")
    p.add_argument("--tasks", type=list[AttributeTask] | None, default=None, help="Attribute triples + prompts.")
    p.add_argument("--out-dir", type=Path | None, default=None, help="Write report.json, table.md and PNG figures.")
    p.add_argument("--tensorboard", type=bool, default=False, help="Also log the figures to <out-dir>/tensorboard.")
    p.add_argument("--cache-dir", type=str | None, default=None, help="Feature cache (default $STORI_CACHE).")
    p.add_argument("--device", type=str, default="cpu")
    p.add_argument("--batch-size", type=int, default=64)
    return p


def main(argv: list[str]) -> int:
    """Run ``stori retrieval-eval``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from stori_pl.retrieval.attributes import load_attributes
    from stori_pl.retrieval.runner import (
        DEFAULT_TASKS,
        format_table,
        run_preference_retrieval,
    )
    from stori_pl.toy.data import load_toy_attributes

    tasks = args.tasks
    if tasks is None:
        if args.dataset not in DEFAULT_TASKS:
            parser.error(f"--tasks is required for dataset {args.dataset!r} (defaults exist for {list(DEFAULT_TASKS)})")
        tasks = DEFAULT_TASKS[args.dataset]
    tasks = [t if isinstance(t, AttributeTask) else AttributeTask(**dict(t)) for t in tasks]
    logger = None
    if args.tensorboard:
        if args.out_dir is None:
            parser.error("--tensorboard needs --out-dir")
        from torch.utils.tensorboard import SummaryWriter

        logger = SummaryWriter(str(args.out_dir / "tensorboard"))
    try:
        ds = load_attributes(args.dataset, args.root, loaders={"toy": load_toy_attributes})
        report = run_preference_retrieval(
            ds, tasks, args.model, args.pretrained, start_block=args.start_block, per_category=args.per_category,
            seed=args.seed, weights=args.weights, top_k=args.top_k, methods=args.methods, sweep=args.sweep,
            out_dir=args.out_dir, cache_dir=args.cache_dir, device=args.device, batch_size=args.batch_size,
            logger=logger)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"stori retrieval-eval: error: {msg}", file=sys.stderr)
        return 2
    finally:
        if logger is not None:
            logger.close()
    table = format_table(report)
    print(table)
    if args.out_dir is not None:
        from stori_pl.utils import atomic_write

        with atomic_write(args.out_dir / "table.md", "w", encoding="utf-8") as f:
            f.write(table + "\n")
        print(f"\nreport, table and figures in {args.out_dir}")
    return 0
