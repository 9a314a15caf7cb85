"""Toy-world benchmarks in the standard on-disk formats, and their few-shot datamodules.

- **ToyShapes** (fine-grained few-shot classification, CoOp layout): 48 classes named by (pattern, color, shape),
  e.g. "striped red circle" vs "dotted red circle" vs "striped blue circle" (4 shapes × 4 colors × 3 patterns);
  ``toy_shapes/images/<class>/<split>_<i>.png``, ``toy_shapes/split_zhou_ToyShapes.json``
  (``{"train"|"val"|"test": [[impath, label, classname]]}``) and ``toy_shapes/cupl_toy_shapes.json`` (CuPL-style
  sentences per class). Size, background and a distractor object in a corner (half the scenes) vary freely within
  a class; the CuPL sentences still mention sizes and backgrounds, like LLM descriptions full of details that do
  not discriminate — SToRI learns to down-weight those words. 100 test images per class.
- **ToyShapesSpurious**: the same classes, but every *training* scene has a distractor whose color follows the class
  (:func:`spurious_color`); validation and test scenes are as in ToyShapes. Its CuPL sentences mention that
  distractor half of the time, as a description written from the training photos would: a spurious cue.
- **ToyKinds**: 8 classes, the invented nouns of :data:`stori_pl.toy.world.KINDS` ("blicket", "dax", ...), whose
  look depends on a state word (wet / dry): the class name alone is ambiguous, the state resolves it. The ``toy``
  attribute labeller gives each image's state (IntCoOp's attribute).
- **Toy attributes** (preference retrieval, read by ``stori retrieval-eval --dataset csv``):
  ``toy_attributes/images/*.png`` + ``toy_attributes/attributes.csv`` (column ``image`` and one 0/1 column per
  attribute value, e.g. ``red``, ``striped``, ``circle``, ``white_background``); :data:`TOY_RETRIEVAL_TASKS`
  are the attribute triples (8 balanced categories each, like the paper's CelebA pools).

All are generated deterministically (from a seed) by :func:`write_toy_benchmark` / :func:`write_toy_attributes`,
and automatically by the datamodules when absent.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stori_pl.data.attribute_labels import LABELLERS
from stori_pl.data.base import FewShotDataModule
from stori_pl.retrieval.attributes import AttributeTask, load_attribute_csv
from stori_pl.toy.images import ATTRIBUTE_FILE, load_toy_images
from stori_pl.toy.world import (
    ATTRIBUTES,
    HELDOUT,
    IMAGE_SIZE,
    KINDS,
    STATES,
    ToyObject,
    render,
    sample_object,
)
from stori_pl.utils import atomic_write, write_json

__all__ = ["ToyShapes", "ToyShapesSpurious", "ToyKinds", "known_attributes", "TOY_CLASSES", "TOY_START_BLOCK",
           "TOY_RETRIEVAL_START_BLOCK", "TOY_RETRIEVAL_TASKS", "write_toy_shapes", "write_toy_benchmark",
           "write_toy_attributes", "toy_shapes_items", "toy_image_attributes", "toy_labeller", "load_toy_attributes",
           "toy_retrieval_tasks", "toy_cupl", "spurious_color", "ATTRIBUTES", "HELDOUT", "IMAGE_SIZE", "ToyObject",
           "render", "sample_object"]

SPLIT_FILE = "split_zhou_ToyShapes.json"
# First reweighted block for the toy CLIP (12 text blocks, like CLIP ViT-B and ViT-L): the paper's block 7.
TOY_START_BLOCK = 7
TOY_RETRIEVAL_START_BLOCK = 7
RETRIEVAL_PER_CATEGORY = 40  # images per attribute combination in the retrieval pools
CUPL_FILE = "cupl_toy_shapes.json"
IMAGE_ATTRIBUTES_FILE = "image_attributes.json"  # {impath: {attribute: value}} of every benchmark image
TOY_LABEL_ATTRIBUTE = "size"  # default attribute of the `toy` attribute labeller on ToyShapes (see toy_labeller)
BENCHMARK_NOISE = 5.0  # pixel noise of benchmark scenes
BENCHMARK_DISTRACTOR = 0.5  # share of benchmark scenes with a distractor object
BENCHMARK_LIGHT = (0.9, (20.0, 5.0, -15.0))  # a warm lamp: the benchmarks' camera differs from pre-training's (world.render)
# (pattern, color, shape): 4 shapes x 4 colors x 3 patterns; every class differs from 7 others in one word
TOY_COLORS = ("red", "green", "blue", "yellow")
TOY_CLASSES: list[tuple[str, str, str]] = [
    (p, c, s) for s in ATTRIBUTES["shape"] for c in TOY_COLORS for p in ATTRIBUTES["pattern"]
]
# (attribute, value) triples + prompt template ({0}, {1}, {2} = the values' phrases) for retrieval
TOY_RETRIEVAL_TASKS: list[dict] = [
    {"attributes": ["red", "striped", "circle"], "prompt": "a photo of a {0} {1} {2}."},
    {"attributes": ["blue", "dotted", "square"], "prompt": "a photo of a {0} {1} {2}."},
    {"attributes": ["green", "plain", "triangle"], "prompt": "a photo of a {1} {0} {2}."},
    {"attributes": ["yellow", "striped", "star"], "prompt": "a photo of a {0} {2} with {1}."},
    {"attributes": ["purple", "dotted", "circle"], "prompt": "a picture of a {2} that is {0} and {1}."},
    {"attributes": ["orange", "large", "square"], "prompt": "a photo of a {1} {0} {2}."},
    {"attributes": ["red", "small", "triangle"], "prompt": "a photo of a {1} {0} {2}."},
    {"attributes": ["blue", "star", "white_background"], "prompt": "a photo of a {0} {1} on a {2} background."},
    {"attributes": ["green", "circle", "black_background"], "prompt": "a photo of a {0} {1} on a {2} background."},
    {"attributes": ["striped", "square", "gray_background"], "prompt": "a photo of a {0} {1} on a {2} background."},
]
_PHRASE = {"striped": "stripes"}  # phrase of a value where a template uses it as a noun ("with {1}")


def classname(pattern: str, color: str, shape: str) -> str:
    """``"striped red circle"``."""
    return f"{pattern} {color} {shape}"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as f:
        f.write(_png(array))


# ----------------------------------------------------------------------------- few-shot classification
@dataclass(frozen=True)
class BenchmarkSpec:
    """What a toy few-shot benchmark is: its folder, classes and how a scene of a class is drawn.

    Attributes:
        name: Folder under the data root (``toy_shapes``, ...).
        classes: Class names in label order.
        spurious: Training scenes get a distractor whose color follows the class (:func:`spurious_color`).
        kinds: Classes are the nouns of :data:`KINDS` (a random state per scene) instead of (pattern, color, shape).
    """

    name: str
    classes: tuple[str, ...]
    spurious: bool = False
    kinds: bool = False

    def scene(self, label: int, part: str, rng: random.Random) -> ToyObject:
        """Draw one scene of class ``label`` for ``part`` (train / val / test)."""
        if self.kinds:
            shape, color, pattern = KINDS[self.classes[label]][rng.choice(STATES)]
        else:
            pattern, color, shape = TOY_CLASSES[label]
        fixed = {"pattern": pattern, "color": color, "shape": shape}
        if self.spurious and part == "train":
            fixed["d_color"] = spurious_color(TOY_CLASSES[label])
        return sample_object(rng, heldout=None, distractor=BENCHMARK_DISTRACTOR, **fixed)


def spurious_color(triple: tuple[str, str, str]) -> str:
    """The distractor color of a class's training scenes in ToyShapesSpurious: fixed per class, never the class's
    own color, different for classes that differ only in color (so it predicts the class among its neighbours)."""
    pattern, color, shape = triple
    ring = ATTRIBUTES["color"]
    offset = 1 + (ATTRIBUTES["pattern"].index(pattern) + ATTRIBUTES["shape"].index(shape)) % (len(ring) - 1)
    return ring[(ring.index(color) + offset) % len(ring)]


SHAPES_SPEC = BenchmarkSpec("toy_shapes", tuple(classname(*c) for c in TOY_CLASSES))
SPURIOUS_SPEC = BenchmarkSpec("toy_shapes_spurious", SHAPES_SPEC.classes, spurious=True)
KINDS_SPEC = BenchmarkSpec("toy_kinds", tuple(KINDS), kinds=True)
SPECS = {s.name: s for s in (SHAPES_SPEC, SPURIOUS_SPEC, KINDS_SPEC)}
_FILLERS = ("simple", "geometric", "flat", "bright", "neat", "clean")


def toy_cupl(seed: int = 0, per_class: int = 8, spec: BenchmarkSpec = SHAPES_SPEC) -> dict[str, list[str]]:
    """CuPL-style sentences per class: the class's words plus details that do not discriminate.

    Each class gets a "favourite" size and background that its sentences mention most of the time (LLM
    descriptions hallucinate typical looks), unseen filler words, and sentences that omit one of the class's
    own attributes, so zero-shot classification with all sentences is imperfect. ToyShapesSpurious's sentences
    mention the training scenes' distractor ("next to a small green square") half of the time; ToyKinds'
    sentences name a state in most sentences (both states across a class's sentences).
    """
    if spec.kinds:
        return _kinds_cupl(seed, per_class)
    rng = random.Random(seed)
    templates = (
        "a {size} {color} {pattern} {shape} on a {bg} background.",
        "a {filler} {color} {shape} with {pattern_pp} against a {bg} background.",
        "a photo of a {size} {pattern} {color} {shape}.",
        "a {shape} that is {color} and {pattern}, {size} and {filler}.",
        "a {color} {shape} on a {bg} background, {filler} and {size}.",
        "a {size} {pattern} {shape} in front of a {bg} background.",
        "there is a {filler} {size} {color} {pattern} {shape}.",
        "a drawing of a {color} {pattern} {shape} on a {bg} background.",
    )
    pp = {"striped": "stripes", "dotted": "dots", "plain": "no pattern"}
    out = {}
    for pattern, color, shape in TOY_CLASSES:
        fav_size, fav_bg = rng.choice(ATTRIBUTES["size"]), rng.choice(ATTRIBUTES["background"])
        sentences = []
        for i in range(per_class):
            size = fav_size if rng.random() < 0.8 else rng.choice(ATTRIBUTES["size"])
            bg = fav_bg if rng.random() < 0.8 else rng.choice(ATTRIBUTES["background"])
            text = templates[i % len(templates)].format(
                size=size, bg=bg, color=color, pattern=pattern, shape=shape, pattern_pp=pp[pattern],
                filler=rng.choice(_FILLERS))
            if spec.spurious and i % 2 == 0:
                d_shape = rng.choice(ATTRIBUTES["shape"])
                text = text.removesuffix(".") + f" next to a small {spurious_color((pattern, color, shape))} {d_shape}."
            sentences.append(text)
        out[classname(pattern, color, shape)] = sentences
    return out


def _kinds_cupl(seed: int, per_class: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    templates = ("a {state} {noun} on a {bg} background.", "a photo of a {size} {state} {noun}.",
                 "a {noun} that is {state}, {size} and {filler}.", "a {filler} {noun} against a {bg} background.",
                 "there is a {state} {noun}.", "a drawing of a {size} {noun} on a {bg} background.")
    out = {}
    for noun in KINDS:
        out[noun] = [templates[i % len(templates)].format(
            noun=noun, state=STATES[i % 2], size=rng.choice(ATTRIBUTES["size"]),
            bg=rng.choice(ATTRIBUTES["background"]), filler=rng.choice(_FILLERS)) for i in range(per_class)]
    return out


def toy_shapes_items(seed: int = 0, n_train: int = 32, n_val: int = 8, n_test: int = 100,
                     spec: BenchmarkSpec = SHAPES_SPEC) -> Iterator[tuple]:
    """A benchmark's images in generation order: ``(part, label, classname, impath, ToyObject, image [64, 64, 3])``.

    One seeded RNG draws every scene and renders it, so this sequence *is* the benchmark of
    :func:`write_toy_benchmark` (and replaying it recovers the attributes of a folder written without them).
    """
    rng = random.Random(seed)
    for label, name in enumerate(spec.classes):
        for part, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            for i in range(n):
                obj = spec.scene(label, part, rng)
                impath = f"{name.replace(' ', '_')}/{part}_{i:03d}.png"
                yield part, label, name, impath, obj, render(obj, rng, noise=BENCHMARK_NOISE, light=BENCHMARK_LIGHT)


def write_toy_benchmark(root: str | Path, spec: BenchmarkSpec = SHAPES_SPEC, seed: int = 0, n_train: int = 32,
                        n_val: int = 8, n_test: int = 100) -> Path:
    """Write a toy benchmark under ``root/<spec.name>`` (CoOp layout); returns that folder.

    Each image's attributes (main object, distractor, kind and state) are recorded in ``image_attributes.json``
    (``{impath: {"shape": ..., "d_color": ..., ...}}``). The split file is written last, so a folder with a split
    file is complete.
    """
    folder = Path(root).expanduser() / spec.name
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    attributes = {}
    for part, label, name, impath, obj, image in toy_shapes_items(seed, n_train, n_val, n_test, spec):
        _write_png(folder / "images" / impath, image)
        split[part].append([impath, label, name])
        attributes[impath] = {**obj.full_dict(), "kind": obj.kind, "state": obj.state}
    write_json(folder / CUPL_FILE, toy_cupl(seed, spec=spec))
    write_json(folder / IMAGE_ATTRIBUTES_FILE, attributes, indent=None)
    write_json(folder / SPLIT_FILE, split, indent=None)
    return folder


def write_toy_shapes(root: str | Path, seed: int = 0, n_train: int = 32, n_val: int = 8, n_test: int = 100) -> Path:
    """:func:`write_toy_benchmark` of ToyShapes (``root/toy_shapes``)."""
    return write_toy_benchmark(root, SHAPES_SPEC, seed, n_train, n_val, n_test)


def toy_image_attributes(folder: str | Path, seed: int = 0) -> dict[str, dict[str, str]]:
    """Every benchmark image's attributes, ``{impath: {"shape", "color", ..., "d_color", "kind", "state"}}``.

    Read from ``image_attributes.json``; a folder written without that file gets it by replaying the generator
    (:func:`toy_shapes_items` with the split file's image counts), checked against the first and last images on
    disk pixel for pixel, and the file is then written (when the folder is writable).

    Raises:
        ValueError: The replay does not reproduce the folder's images (not written by ``write_toy_benchmark(seed)``).
    """
    folder = Path(folder)
    if (folder / IMAGE_ATTRIBUTES_FILE).is_file():
        return json.loads((folder / IMAGE_ATTRIBUTES_FILE).read_text(encoding="utf-8"))
    spec = SPECS.get(folder.name, SHAPES_SPEC)
    split = json.loads((folder / SPLIT_FILE).read_text(encoding="utf-8"))
    counts = {part: len(split[part]) // len(spec.classes) for part in ("train", "val", "test")}
    check = {split["train"][0][0], split["test"][-1][0]}
    attributes = {}
    for _, _, _, impath, obj, image in toy_shapes_items(seed, counts["train"], counts["val"], counts["test"], spec):
        attributes[impath] = {**obj.full_dict(), "kind": obj.kind, "state": obj.state}
        if impath in check and not np.array_equal(np.asarray(Image.open(folder / "images" / impath)), image):
            raise ValueError(f"cannot recover the toy attributes of {folder}: image {impath} differs from "
                             f"write_toy_benchmark(seed={seed}); delete the folder to regenerate it")
    if {e[0] for part in split.values() for e in part} - set(attributes):
        raise ValueError(f"cannot recover the toy attributes of {folder}: its split lists images the generator "
                         "does not make; delete the folder to regenerate it")
    with contextlib.suppress(OSError):
        write_json(folder / IMAGE_ATTRIBUTES_FILE, attributes, indent=None)
    return attributes


LABEL_ATTRIBUTES = (*ATTRIBUTES, "state", "d_color", "d_shape")


def toy_labeller(datamodule, parts, attribute: str | None = None) -> tuple[dict[str, str], dict]:
    """The ``toy`` attribute labeller: each image's exact ``attribute``.

    Default: ``state`` on ToyKinds (wet / dry: the word that resolves the noun, IntCoOp's premise), else ``size``
    (an instance attribute that is not in the class name and reads naturally as the adjective of "a photo of a
    small striped red circle."); ``background`` gives white / black / gray. Images without a value (no distractor
    for ``d_color``) are left out.

    Args:
        datamodule: A toy benchmark datamodule (:class:`ToyShapes`, :class:`ToyShapesSpurious`, :class:`ToyKinds`).
        parts: Parts to label.
        attribute: One of :data:`LABEL_ATTRIBUTES` (the class attributes ``pattern``, ``color``, ``shape`` are
            allowed but carry the class name).
    """
    if not isinstance(datamodule, ToyShapes):
        raise ValueError(f"the toy labeller labels the toy benchmarks, not {type(datamodule).__name__}")
    attribute = attribute or ("state" if datamodule.spec.kinds else TOY_LABEL_ATTRIBUTE)
    if attribute not in LABEL_ATTRIBUTES:
        raise ValueError(f"unknown toy attribute {attribute!r}; choose one of: {', '.join(LABEL_ATTRIBUTES)}")
    truth = toy_image_attributes(datamodule.generate())
    keys = [e[0] for part in parts for e in datamodule.subsets()[part]]
    vocabulary = STATES if attribute == "state" else ATTRIBUTES[attribute.removeprefix("d_")]
    return ({k: truth[k][attribute] for k in keys if truth[k].get(attribute)},
            {"attribute": attribute, "vocabulary": list(vocabulary)})


class ToyShapes(FewShotDataModule):
    """The toy world's fine-grained few-shot benchmark (48 classes); generated under ``root/toy_shapes`` when absent.

    Defaults use the shipped tiny CLIP (``stori-toy``, ``pretrained="builtin"``) and the generated CuPL file.
    Arguments as :class:`stori_pl.data.base.FewShotDataModule`.
    """

    spec = SHAPES_SPEC
    folder = SHAPES_SPEC.name
    image_dir = "images"
    split_file = SPLIT_FILE
    split_source = "generated by stori_pl.toy.data.write_toy_benchmark"
    templates = ("a photo of a {}.",)

    def __init__(self, root: str = "data", clip_model: str = "stori-toy", pretrained: str | None = "builtin",
                 shots: int = 16, num_workers: int = 0, **kwargs):
        super().__init__(root, clip_model=clip_model, pretrained=pretrained, shots=shots,
                         num_workers=num_workers, **kwargs)

    def dataset_dir(self) -> Path:
        return self.root / self.folder

    def generate(self) -> Path:
        """Write the benchmark if its split file is absent; returns the dataset folder."""
        d = self.dataset_dir()
        if not (d / SPLIT_FILE).is_file():
            print(f"{type(self).__name__}: generating the toy benchmark under {d} (one-off, a few seconds)")
            write_toy_benchmark(self.root, self.spec)
        return d

    def load_split(self, dataset_dir: Path) -> dict:
        self.generate()
        return super().load_split(dataset_dir)

    def _cupl_prompts(self) -> list[list[str]]:
        if self.cupl is None:
            self.cupl = str(self.generate() / CUPL_FILE)
        return super()._cupl_prompts()


class ToyShapesSpurious(ToyShapes):
    """ToyShapes whose training scenes carry a distractor colored by class (:func:`spurious_color`); val and test
    scenes do not (a spurious cue, like Waterbirds' backgrounds). Under ``root/toy_shapes_spurious``."""

    spec = SPURIOUS_SPEC
    folder = SPURIOUS_SPEC.name


class ToyKinds(ToyShapes):
    """Eight invented nouns whose look depends on a state word (``wet blicket`` = red striped circle, ``dry
    blicket`` = blue dotted circle, ``wet dax`` = blue striped circle ...): the class name alone is ambiguous, the
    state resolves it. Under ``root/toy_kinds``; the ``toy`` labeller gives each image's state."""

    spec = KINDS_SPEC
    folder = KINDS_SPEC.name


def known_attributes(paths: list[Path]) -> list[dict[str, str]] | None:
    """The main-object attributes (``shape``, ``color``, ...) of every image when each lies in a toy folder that
    records them (``attributes.json`` of :func:`stori_pl.toy.images.write_toy_images`, ``image_attributes.json`` of
    a toy benchmark), else None."""
    tables: dict[Path, dict[str, dict[str, str]] | None] = {}

    def table_of(directory: Path) -> dict[str, dict[str, str]] | None:
        if directory not in tables:
            tables[directory] = None
            for folder in (directory, *directory.parents):
                if (folder / ATTRIBUTE_FILE).is_file():
                    tables[directory] = {str(p.resolve()): a for p, a in zip(*load_toy_images(folder))}
                    break
                if (folder / IMAGE_ATTRIBUTES_FILE).is_file():
                    rows = json.loads((folder / IMAGE_ATTRIBUTES_FILE).read_text(encoding="utf-8"))
                    tables[directory] = {str((folder / "images" / k).resolve()): {a: v[a] for a in ATTRIBUTES}
                                         for k, v in rows.items()}
                    break
        return tables[directory]

    out = []
    for path in paths:
        path = Path(path).resolve()
        found = (table_of(path.parent) or {}).get(str(path))
        if found is None:
            return None
        out.append(found)
    return out


LABELLERS["toy"] = toy_labeller


# ----------------------------------------------------------------------------- attribute retrieval
def attribute_columns() -> list[str]:
    """CSV columns: every value of every attribute (backgrounds as ``<value>_background``)."""
    return [f"{v}_background" if k == "background" else v for k, vals in ATTRIBUTES.items() for v in vals]


def _column_of(name: str) -> tuple[str, str]:
    for key, values in ATTRIBUTES.items():
        value = name.removesuffix("_background") if key == "background" else name
        if value in values and (key != "background" or name.endswith("_background")):
            return key, value
    raise ValueError(f"unknown toy attribute column {name!r}; columns: {attribute_columns()}")


def retrieval_task_phrases(task: dict) -> list[str]:
    """Words of a task's attributes as they appear in its prompt."""
    words = [_column_of(a)[1] for a in task["attributes"]]
    return [_PHRASE.get(w, w) if "with {" + str(i) + "}" in task["prompt"] else w for i, w in enumerate(words)]


def write_toy_attributes(root: str | Path, per_category: int = RETRIEVAL_PER_CATEGORY, seed: int = 0,
                         tasks: list[dict] | None = None) -> Path:
    """Write ``root/toy_attributes`` (images + ``attributes.csv``) for the retrieval tasks; returns the folder.

    For each task, ``per_category`` images of each of its 8 categories: an attribute is "absent" with a
    random other value of the same kind; everything else is random (a distractor in half the scenes, as in the
    benchmarks). Labels cover every column (of the main object).
    """
    folder = Path(root).expanduser() / "toy_attributes"
    rng = random.Random(seed)
    cols = attribute_columns()
    rows = []
    for t, task in enumerate(tasks or TOY_RETRIEVAL_TASKS):
        keys = [_column_of(a) for a in task["attributes"]]
        for present in itertools.product((True, False), repeat=len(keys)):
            for i in range(per_category):
                fixed = {k: v if p else rng.choice([x for x in ATTRIBUTES[k] if x != v]) for (k, v), p in zip(keys, present)}
                obj = sample_object(rng, heldout=None, distractor=BENCHMARK_DISTRACTOR, **fixed)
                rel = f"images/t{t}_{''.join('1' if p else '0' for p in present)}_{i:03d}.png"
                _write_png(folder / rel, render(obj, rng, noise=BENCHMARK_NOISE, light=BENCHMARK_LIGHT))
                rows.append([rel] + [int(_column_of(c)[1] == getattr(obj, _column_of(c)[0])) for c in cols])
    with atomic_write(folder / "attributes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image"] + cols)
        w.writerows(rows)
    write_json(folder / "tasks.json", [{**t, "phrases": retrieval_task_phrases(t)} for t in (tasks or TOY_RETRIEVAL_TASKS)])
    return folder


def load_toy_attributes(root: str | Path):
    """``root/toy_attributes`` as an :class:`~stori_pl.retrieval.attributes.AttributeDataset` (generated if absent)."""
    root = Path(root).expanduser()
    folder = root if (root / "attributes.csv").is_file() else root / "toy_attributes"
    if not (folder / "attributes.csv").is_file():
        folder = write_toy_attributes(root)
    return load_attribute_csv(folder)


def toy_retrieval_tasks() -> list:
    """:data:`TOY_RETRIEVAL_TASKS` as :class:`stori_pl.retrieval.attributes.AttributeTask` objects."""
    return [AttributeTask(list(t["attributes"]), t["prompt"], retrieval_task_phrases(t)) for t in TOY_RETRIEVAL_TASKS]


def main(argv: list[str] | None = None) -> int:
    """``python -m stori_pl.toy.data [ROOT]``: write every toy benchmark under ROOT (default ``data``)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m stori_pl.toy.data [ROOT]   (writes ROOT/toy_shapes, toy_shapes_spurious, toy_kinds, "
              "toy_attributes)")
        return 0
    root = Path(args[0] if args else "data")
    for spec in SPECS.values():
        marker = root / spec.name / SPLIT_FILE
        print(f"{marker.parent}: {'exists' if marker.is_file() else 'written'}")
        if not marker.is_file():
            write_toy_benchmark(root, spec)
    marker = root / "toy_attributes" / "attributes.csv"
    print(f"{marker.parent}: {'exists' if marker.is_file() else 'written'}")
    if not marker.is_file():
        write_toy_attributes(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
