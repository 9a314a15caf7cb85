"""Faithfulness of SAE-component attributions: cumulative deletion per method, curves and areas (lower = better).

Examples::

    stori components-eval runs/zero_shot/version_0/checkpoints/last.ckpt --sae runs/sae/version_0/checkpoints/last.ckpt --root data
    stori components-eval last.ckpt --sae sae.ckpt --data DTD --root /data --split test --steps 10 --output runs/faithfulness
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch



def components_eval(ckpt: str, sae: str | None = None, data: str = "ToyShapes", root: Path = Path("data"),
                    split: Literal["train", "val", "test"] = "test", steps: int = 10, max_images: int = 20,
                    batch_size: int = 32, keep_error: bool = False, seed: int = 0,
                    output: Path = Path("runs/components_eval"), pretrained: str | None = None) -> dict:
    """Delete each image's top-1..--steps components by each method, track cos(image, its class), report areas.

    Args:
        ckpt: Checkpoint of any stori-pl classifier (SToRI, zero-shot, TaskRes, CoOp, ...).
        sae: Sparse-autoencoder checkpoint of the same CLIP (required).
        data: Datamodule (a class of stori_pl.data or stori_pl.toy.data, e.g. DTD, ToyShapes).
        root: Dataset root of --data.
        split: Split whose images are used (each image's target is its own class).
        steps: Components deleted at the last step.
        max_images: At most this many images per class.
        batch_size: Images per forward pass.
        keep_error: Keep the SAE's reconstruction error (step 0 = CLIP's own score; a stori-pl variant);
            false (default) = the authors' protocol (eval_faithfulness.py ``add_residual = False``: the whole
            curve, and the Act×Grad gradients, on the SAE reconstruction).
        seed: Seed of the random baseline.
        output: Folder for curves.png, areas.json, areas.csv and TensorBoard events.
        pretrained: Override the checkpoint's CLIP weights (open_clip tag or local file), e.g. offline.

    Returns:
        ``{"areas": {method: area}, "std_error": {...}, "curves": {method: [mean y per step]}, "n_images": N}``;
        with ``"label_correctness"`` (share, labelled, right) when the images' attributes are known (toy
        benchmarks) and the SAE's component table is kept beside it (``stori components --concept_images``).

    Raises:
        FileNotFoundError: No such checkpoint, SAE or dataset.
        ValueError: An SAE of another CLIP or block (both named), an unreadable image (its path), steps < 1 or
            steps > the SAE's k.
    """
    from stori_pl.cli.component_inputs import label_check, load_matching_sae, split_images
    from stori_pl.interpret.component_tables import default_table_path
    from stori_pl.interpret.concepts import ComponentTable
    from stori_pl.interpret.faithfulness import area_std_error
    from stori_pl.toy.data import known_attributes
    from stori_pl.models import ClipClassifier, load_checkpoint

    classifier = load_checkpoint(ckpt, expect=ClipClassifier, **({} if pretrained is None else {"pretrained": pretrained}))
    module = load_matching_sae(sae, classifier)
    if not 1 <= steps <= module.sae.k:
        raise ValueError(f"--steps must be in 1..{module.sae.k} (the SAE's k: active components per image), got {steps}")
    per_class = split_images(data, root, split, classifier, max_images)
    items = [(p, classifier.classnames.index(c)) for c, ps in per_class.items() for p in ps]
    full = deletion_curves_of(classifier, module, items, steps, batch_size, keep_error, seed)
    result = {"areas": {n: float(c.mean()) for n, c in full.items()},
              "std_error": {n: area_std_error(c) for n, c in full.items()},
              "curves": {n: c.mean(1).tolist() for n, c in full.items()}, "n_images": len(items),
              "steps": steps, "keep_error": keep_error, "split": split, "ckpt": str(ckpt), "sae": str(sae)}
    print_areas(result, classifier.hparams.clip_model, module.block)
    attributes = known_attributes([p for p, _ in items])
    if attributes is not None and default_table_path(sae).is_file():  # toy images: are the labels right?
        check = label_check(ComponentTable.load(default_table_path(sae)), module, [p for p, _ in items], attributes)
        result["label_correctness"] = {k: v for k, v in check.to_dict().items() if k != "rows"}
    write_outputs(Path(output), result)
    return result


def deletion_curves_of(classifier, module, items: list[tuple[str, int]], steps: int, batch_size: int,
                       keep_error: bool, seed: int) -> dict[str, torch.Tensor]:
    """Every method's deletion curve of every image, in batches.

    Args:
        classifier: A loaded :class:`~stori_pl.models.ClipClassifier` (its CLIP and class embeddings).
        module: The :class:`~stori_pl.models.sae.SparseAutoencoder` (``.sae``, ``.block``).
        items: ``N`` ``(image path, class index)`` pairs; each image's target is its class embedding.
        steps: Components deleted at the last step.
        batch_size: Images per forward pass.
        keep_error: Keep the SAE's reconstruction error (see :func:`components_eval`).
        seed: Seed of the random baseline (``seed + batch start`` per batch).

    Returns:
        ``{method: [steps + 1, N]}`` cos(image, class) after deleting the top-0..steps components.
    """
    from stori_pl.cli.component_inputs import load_images
    from stori_pl.interpret.components import component_scores
    from stori_pl.interpret.faithfulness import deletion_curves

    targets = classifier.eval_class_embeddings()
    curves: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        images = load_images(classifier, [p for p, _ in chunk])
        t = targets[torch.tensor([c for _, c in chunk])]
        scores = component_scores(classifier.clip, module.sae, images, module.block, t, seed + start, keep_error)
        for name, c in deletion_curves(classifier.clip, module.sae, images, module.block, t, scores.scores,
                                       steps, keep_error).items():
            curves.setdefault(name, []).append(c)
    return {name: torch.cat(c, dim=1) for name, c in curves.items()}  # [steps + 1, N]


def print_areas(result: dict, clip_model: str, block: int) -> None:
    """The area of each method, most faithful (lowest) first, with its standard error."""
    from stori_pl.interpret.components import METHOD_LABELS

    steps = result["steps"]
    print(f"{result['n_images']} {result['split']} images, {steps} deletions (CLIP {clip_model}, block "
          f"{block}); area = mean cos(image, class) over steps 0..{steps} (lower = more faithful)")
    for name in sorted(result["areas"], key=result["areas"].get):
        print(f"  {METHOD_LABELS[name]:<15}{result['areas'][name]:.4f} ± {result['std_error'][name]:.4f}")


def write_outputs(folder: Path, result: dict) -> None:
    """areas.json, areas.csv, curves.png and TensorBoard scalars (``deletion/<method>`` per step) in ``folder``."""
    import csv
    import io

    from stori_pl.interpret.components import METHOD_LABELS
    from stori_pl.utils import atomic_write, write_json

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "areas.json", result)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "area", "std_error", *[f"step_{i}" for i in range(result["steps"] + 1)]])
    for name, area in sorted(result["areas"].items(), key=lambda kv: kv[1]):
        writer.writerow([name, f"{area:.6f}", f"{result['std_error'][name]:.6f}",
                         *[f"{v:.6f}" for v in result["curves"][name]]])
    with atomic_write(folder / "areas.csv", "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for name, curve in result["curves"].items():
        ax.plot(range(len(curve)), curve, "-o", ms=4,
                label=f"{METHOD_LABELS[name]}: {result['areas'][name]:.3f}")
    ax.set_xlabel("components deleted")
    ax.set_ylabel("cos(image, class)")
    ax.set_title(f"cumulative deletion ({result['n_images']} {result['split']} images)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    from stori_pl.utils import atomic_path

    with atomic_path(folder / "curves.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as tb:
        for name, curve in result["curves"].items():
            for step, value in enumerate(curve):
                tb.add_scalar(f"deletion/{name}", value, step)
            tb.add_scalar(f"deletion_area/{name}", result["areas"][name], 0)
    print(f"wrote {folder / 'areas.json'}, areas.csv, curves.png and TensorBoard events")
