"""Write one attribute word per image of a training config (IntCoOp's labels) with a pluggable labeller.

``--config`` is the training config that ``stori fit`` reads (a file or a shipped name; repeatable) and
``--data.<arg>`` / ``--model.<arg>`` override it as for ``stori fit``. The label file goes next to the feature
cache (``<cache>/attributes/<dataset>/<labeller>....json``), where ``--data.attribute_labels <labeller>`` finds
it; the command prints its path, a few labels and the label counts. Labellers: ``toy`` (the toy world's exact
attribute, ``--attribute size|background``), ``clip`` (offline: the config's CLIP picks an adjective of
``--vocabulary``, default the shipped visual adjectives), ``file`` (``--file CSV`` with columns
``image,attribute``), ``blip2`` (``pip install "stori-pl[blip2]"``; ``--question`` with ``{}`` for the class).

Examples::

    stori attributes --config coop/toy_shapes_16shot.yaml --labeller toy --parts+ test
    stori attributes --config coop/dtd_16shot.yaml --labeller blip2 --parts+ test
    stori attributes --config coop/dtd_16shot.yaml --labeller file --file my_labels.csv
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from stori_pl.cli.cache import load_config
from stori_pl.cli.lightning_args import resolve_config
from stori_pl.data.attribute_labels import make_labels, read_labels
import stori_pl.toy.data  # noqa: F401  (registers the toy labeller)


LABELLER_OPTIONS = {"toy": ("attribute",), "clip": ("vocabulary", "template"), "file": ("file",),
                    "blip2": ("question", "model", "batch_size")}


def attributes(config: list[str], labeller: Literal["toy", "clip", "file", "blip2"] = "clip",
               parts: list[Literal["train", "val", "test"]] = ["train"],  # noqa: B006 (jsonargparse appends with +)
               file: str | None = None, attribute: str | None = None, vocabulary: str | None = None,
               template: str | None = None, question: str | None = None, model: str | None = None,
               batch_size: int | None = None, output: Path | None = None, examples: int = 5,
               overrides: dict[str, str] | None = None) -> int:
    """Label the images of a training config's datamodule and write the label file.

    Args:
        config: Training config(s) of `stori fit` (a YAML file or a shipped name such as coop/dtd_16shot; repeatable).
        labeller: toy, clip, file or blip2.
        parts: Splits whose images get labels (training needs train; val/test labels are for evaluation).
        file: file labeller: CSV with the header image,attribute (paths relative to the dataset's image folder).
        attribute: toy labeller: which toy attribute (size, the default, or background).
        vocabulary: clip labeller: word file (one per line; default the shipped visual_adjectives.txt).
        template: clip labeller: prompt with {adjective} and {classname} (default "a photo of a {adjective} {classname}.").
        question: blip2 labeller: question with {} for the class name (default BLIP-2's VQA format, see docs/intcoop.md).
        model: blip2 labeller: Hugging Face BLIP-2 checkpoint (default Salesforce/blip2-opt-2.7b).
        batch_size: blip2 labeller: images per generate call (default 8).
        output: Label file to write (default: next to the feature cache, where --data.attribute_labels finds it).
        examples: How many example labels to print.
        overrides: ``{"data.root": "/data", ...}`` (values parsed as YAML).

    Returns:
        Exit status 0.
    """
    given = {"file": file, "attribute": attribute, "vocabulary": vocabulary, "template": template,
             "question": question, "model": model, "batch_size": batch_size}
    wrong = [k for k, v in given.items() if v is not None and k not in LABELLER_OPTIONS[labeller]]
    if wrong:
        owner = next(n for n, opts in LABELLER_OPTIONS.items() if wrong[0] in opts)
        raise ValueError(f"--{wrong[0]} is an option of the {owner} labeller, not of {labeller}")
    cls, init_args = load_config([resolve_config(c) for c in config], overrides)
    init_args.pop("attribute_labels", None)  # the datamodule is only read here
    dm = cls(**init_args)
    options = {k: v for k, v in given.items() if v is not None}
    path = make_labels(dm, labeller, parts, output=output, **options)
    labels = read_labels(path)
    print(f"{len(labels)} attribute labels ({labeller}, {cls.__name__} {', '.join(parts)}) written to {path}")
    keys = list(labels)
    for key in keys[:: max(1, len(keys) // max(1, examples))][:examples]:  # spread over the classes
        print(f"  {key}: {labels[key]}")
    counts = Counter(labels.values()).most_common()
    shown = ", ".join(f"{w} {n}" for w, n in counts[:15])
    print(f"{len(counts)} different words: {shown}{' ...' if len(counts) > 15 else ''}")
    return 0
