"""Attribute labels (IntCoOp): one attribute word per image, made by a pluggable labeller, kept in a JSON file.

A label file (written atomically, by default next to the feature cache, see :func:`default_label_file`)::

    {"format": 1, "labeller": "clip", "dataset": "DTD", "clip_model": "ViT-B-16", "options": {...},
     "vocabulary": [...],                 # labellers with a closed vocabulary (toy, clip)
     "labels": {"banded/banded_0002.jpg": "striped", ...}}   # key: image path relative to the image root

Labellers (:data:`LABELLERS`, ``name -> fn(datamodule, parts, **options) -> (labels, meta)``):

- ``clip`` (offline): the datamodule's CLIP picks, per image, the adjective of the shipped vocabulary
  (``stori_pl/assets/visual_adjectives.txt``, sources in its header) whose prompt ``"a photo of a {adjective}
  {classname}."`` matches the image best;
- ``file``: a user's CSV with the columns ``image,attribute``;
- ``blip2``: BLIP-2 answers a question per image (:mod:`stori_pl.data.blip2`; ``pip install "stori-pl[blip2]"``);
- ``toy``: the toy world's exact attributes (registered by :mod:`stori_pl.toy.data`).

Pure Python / torch (no Lightning). A ``FewShotDataModule(attribute_labels=...)`` reads the file through
:func:`datamodule_labels` and :func:`attribute_index`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from stori_pl.data.blip2 import BLIP2_MODEL, BLIP2_QUESTION, blip2_labels, load_blip2_generator
from stori_pl.utils import cache_root, content_hash, write_json
from stori_pl.data.cupl import sentence_features
from stori_pl.text.clip import load_clip

LABEL_FORMAT = 1
VOCABULARY_FILE = Path(__file__).resolve().parents[1] / "assets" / "visual_adjectives.txt"
CLIP_TEMPLATE = "a photo of a {adjective} {classname}."
OFFLINE_LABELLERS = ("toy", "clip")  # made on the fly by a datamodule when its label file is absent
COMMAND = "stori attributes --config CONFIG --labeller {labeller}"
ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = re.compile(r"[^\w\s'-]", re.UNICODE)

Labeller = Callable[..., tuple[dict[str, str], dict[str, Any]]]
LABELLERS: dict[str, Labeller] = {}
"""Labeller name -> ``fn(datamodule, parts, **options) -> (labels, meta)``: ``labels`` maps image keys
(:meth:`FewShotDataModule.image_keys`) to raw words (normalized by :func:`make_labels`), ``meta`` adds entries to
the file (``vocabulary``: a closed list of words, ``clip_model``, ...). Register new ones here."""
NAMING_OPTIONS: dict[str, tuple[str, ...]] = {"toy": ("attribute",), "clip": ("vocabulary", "template"),
                                              "blip2": ("question", "model")}
"""Options of each labeller that change its labels, hence the default file name (others, such as a batch size,
do not)."""


class AttributeLabels(NamedTuple):
    """A loaded label file: its path, ``labels`` (image key -> word), ``words`` (sorted vocabulary) and meta."""

    path: Path
    labels: dict[str, str]
    words: list[str]
    meta: dict[str, Any]


def command(labeller: str) -> str:
    """The ``stori attributes`` command line that makes labels with ``labeller``."""
    return COMMAND.format(labeller=labeller) + (" --file CSV" if labeller == "file" else "")


# ------------------------------------------------------------------------------------------------ the file
def normalize_label(text: str, image: str) -> str:
    """One attribute word: lower-cased, punctuation and articles removed (``"A Green."`` -> ``"green"``).

    Args:
        text: The raw label.
        image: The image it belongs to (named in the error).

    Raises:
        ValueError: Empty, or still more than one word after normalization (naming ``image``).
    """
    if not isinstance(text, str):
        raise ValueError(f"attribute label of {image} is {text!r}, not a word")
    words = [w.strip("-'") for w in _PUNCTUATION.sub(" ", text.lower()).split()]
    words = [w for w in words if w and w not in ARTICLES]
    if not words:
        raise ValueError(f"empty attribute label {text!r} for image {image}; give one word")
    if len(words) > 1:
        raise ValueError(f"attribute label {text!r} of image {image} has {len(words)} words; give one word "
                         f"(e.g. {words[0]!r})")
    return words[0]


def read_label_file(path: str | Path) -> tuple[dict[str, str], dict[str, Any]]:
    """``(labels, meta)`` of a label file; labels are normalized (:func:`normalize_label`).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not a label file, or a label that is empty or more than one word (naming its image).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"attribute label file not found: {path}; make one with `{command('clip')}` "
                                "(or --labeller toy | file | blip2)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"attribute label file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise ValueError(f"{path} is not an attribute label file (a JSON object with \"labels\": {{image: word}})")
    labels = {str(k): normalize_label(v, f"{k} (in {path})") for k, v in data["labels"].items()}
    return labels, {k: v for k, v in data.items() if k != "labels"}


def read_labels(path: str | Path) -> dict[str, str]:
    """The labels of a label file: image path (relative to the dataset's image root) -> word."""
    return read_label_file(path)[0]


def write_labels(path: str | Path, labels: dict[str, str], meta: dict[str, Any]) -> None:
    """Write a label file atomically (``meta`` entries such as ``labeller``, ``dataset`` first, then ``labels``)."""
    body = {"format": LABEL_FORMAT, **{k: v for k, v in meta.items() if k != "labels"}}
    write_json(path, {**body, "labels": dict(sorted(labels.items()))})


def label_words(labels: dict[str, str], meta: dict[str, Any]) -> list[str]:
    """Sorted unique words: the labels' words, plus the labeller's closed vocabulary when the file has one."""
    return sorted(set(labels.values()) | {normalize_label(w, "vocabulary") for w in meta.get("vocabulary") or ()})


# ------------------------------------------------------------------------------------------- making labels
def get_labeller(name: str) -> Labeller:
    """The registered labeller ``name`` (the toy one appears once :mod:`stori_pl.toy.data` is imported)."""
    if name not in LABELLERS:
        raise ValueError(f"unknown attribute labeller {name!r}; choose one of: {', '.join(sorted(LABELLERS))}")
    return LABELLERS[name]


def dataset_id(datamodule) -> str:
    """``<DataModuleClass>-<hash of the dataset folder>``: the folder of a dataset's label files."""
    return f"{type(datamodule).__name__}-{content_hash(str(datamodule.dataset_dir().resolve()), length=8)}"


def default_label_file(datamodule, labeller: str, **options: Any) -> Path:
    """``<cache>/attributes/<dataset id>/<labeller>[-<clip model>][-<options>].json``.

    Keyed by dataset and labeller, by the CLIP for ``clip`` (its labels depend on it) and by the options that
    change the labels (:data:`NAMING_OPTIONS`) when they differ from the labeller's defaults.
    """
    import inspect

    parts = [labeller]
    if labeller == "clip":
        parts.append(f"{datamodule.clip_model}-{datamodule.pretrained}")
    fn = LABELLERS.get(labeller)
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()} if fn else {}
    for name in NAMING_OPTIONS.get(labeller, ()):
        value = options.get(name)
        if value is not None and value != defaults.get(name):
            value = str(value)
            parts.append(value if re.fullmatch(r"[\w.-]{1,32}", value) else content_hash(value, length=8))
    name = re.sub(r"[^\w.+-]", "_", "-".join(parts))
    return cache_root(datamodule.cache_dir) / "attributes" / dataset_id(datamodule) / f"{name}.json"


def make_labels(datamodule, labeller: str, parts: Sequence[str] = ("train",), output: str | Path | None = None,
                **options: Any) -> Path:
    """Label the images of ``parts`` with ``labeller`` and write the label file; returns its path.

    Labels already in the file from the same labeller and options are kept for images not labelled now (so
    labelling ``test`` later adds to the ``train`` labels).

    Args:
        datamodule: A :class:`~stori_pl.data.base.FewShotDataModule`.
        labeller: A name in :data:`LABELLERS` (``toy``, ``clip``, ``file``, ``blip2``).
        parts: Which parts' images to label (``train``, ``val``, ``test``).
        output: The label file (default: :func:`default_label_file`).
        **options: The labeller's options (e.g. ``attribute="background"`` for ``toy``, ``file=...`` for ``file``).
    """
    parts = tuple(parts)
    unknown = [p for p in parts if p not in ("train", "val", "test")]
    if unknown or not parts:
        raise ValueError(f"parts must be some of train, val, test; got {list(parts)}")
    labels, extra = get_labeller(labeller)(datamodule, parts, **options)
    labels = {k: normalize_label(v, k) for k, v in labels.items()}
    path = Path(output).expanduser() if output else default_label_file(datamodule, labeller, **options)
    kept = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool)) or v is None}
    meta = {"labeller": labeller, "dataset": type(datamodule).__name__, **extra, "options": kept}
    if path.is_file():
        try:
            old, old_meta = read_label_file(path)
            if all(old_meta.get(k) == v for k, v in meta.items()):
                labels = {**old, **labels}
        except ValueError:
            pass  # an unreadable old file is replaced
    write_labels(path, labels, meta)
    return path


# ----------------------------------------------------------------------------------- datamodule glue
def resolve_label_file(datamodule) -> tuple[Path, str | None]:
    """``(path, labeller)`` of ``datamodule.attribute_labels``: a labeller's default file or a given path
    (labeller None)."""
    spec = str(datamodule.attribute_labels)
    if spec in LABELLERS or spec in ("toy", "clip", "file", "blip2"):
        return default_label_file(datamodule, spec), spec
    return Path(spec).expanduser(), None


def datamodule_labels(datamodule, parts: Sequence[str] = ()) -> AttributeLabels:
    """The label file of ``datamodule.attribute_labels``, made or completed first for the offline labellers.

    For ``toy`` and ``clip``, images of ``parts`` without a label are labelled now (and added to the file);
    for ``file`` and ``blip2`` a missing file is an error naming the command that makes it.
    """
    path, labeller = resolve_label_file(datamodule)
    if labeller in OFFLINE_LABELLERS:
        have = read_labels(path) if path.is_file() else {}
        todo = [p for p in parts if any(k not in have for k in datamodule.image_keys(p))]
        if todo or not path.is_file():
            make_labels(datamodule, labeller, todo or ("train",))
    elif not path.is_file():
        if labeller is None:
            raise FileNotFoundError(f"attribute label file not found: {path}; make one with `{command('clip')}` "
                                    "(or --labeller toy | file | blip2) and pass its path, or a labeller name")
        raise FileNotFoundError(f"no {labeller} attribute labels for {type(datamodule).__name__} yet (expected "
                                f"{path}); make them with `{command(labeller)}`")
    labels, meta = read_label_file(path)
    return AttributeLabels(path, labels, label_words(labels, meta), meta)


def attribute_index(labels: AttributeLabels, keys: Sequence[str], part: str,
                    image_root: Path | None = None) -> torch.Tensor:
    """LongTensor ``[N]``: each image's index into ``labels.words`` (-1 = no label).

    Raises:
        ValueError: A ``train`` image without a label (naming the first one and the command that makes labels).
    """
    index = {w: i for i, w in enumerate(labels.words)}
    if part == "train":
        missing = [k for k in keys if k not in labels.labels]
        if missing:
            labeller = labels.meta.get("labeller") or "clip"
            where = f" relative to {image_root}" if image_root else ""
            other = (f"; its labels are for other images, e.g. {next(iter(labels.labels))}"
                     if len(missing) == len(keys) and labels.labels else "")
            raise ValueError(
                f"{len(missing)} of {len(keys)} training images have no attribute label in {labels.path}, first: "
                f"{missing[0]} (keys are image paths{where}){other}. Label them with `{command(labeller)}`")
    return torch.tensor([index.get(labels.labels.get(k), -1) for k in keys], dtype=torch.long)


# ------------------------------------------------------------------------------------------ labellers
def load_vocabulary(path: str | Path | None = None) -> list[str]:
    """Words of a vocabulary file (one per line, ``#`` comments), default the shipped visual adjectives."""
    path = Path(path).expanduser() if path else VOCABULARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path} (one word per line)")
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    words = list(dict.fromkeys(normalize_label(ln, f"line of {path}") for ln in lines if ln))
    if len(words) < 2:
        raise ValueError(f"vocabulary file {path} has {len(words)} word(s); give at least two, one per line")
    return words


def clip_labeller(datamodule, parts: Sequence[str], vocabulary: str | None = None,
                  template: str = CLIP_TEMPLATE) -> tuple[dict[str, str], dict[str, Any]]:
    """Per image, the vocabulary word whose prompt (``template`` with the image's class) its CLIP feature
    matches best (cosine), with the datamodule's CLIP and cached features.

    Args:
        datamodule: The images' datamodule.
        parts: Parts to label.
        vocabulary: Word file (default: the shipped ``visual_adjectives.txt``).
        template: Prompt with ``{adjective}`` and ``{classname}``.
    """
    if "{adjective}" not in template or "{classname}" not in template:
        raise ValueError(f"template must contain {{adjective}} and {{classname}}, got {template!r}")
    words = load_vocabulary(vocabulary)
    model, _, tokenizer = load_clip(datamodule.clip_model, datamodule.pretrained)
    datamodule.subsets()  # class names follow the split (and classes / subsample_classes)
    names, text, labels = datamodule.classnames, {}, {}
    for part in parts:
        feats, classes = datamodule.split_features(part)  # [N, D] or [N, 1+V, D]
        feats = feats[:, 0] if feats.ndim == 3 else feats
        for key, f, c in zip(datamodule.image_keys(part), feats, classes.tolist()):
            if c not in text:
                with torch.no_grad():
                    prompts = [template.format(adjective=w, classname=names[c]) for w in words]
                    text[c] = sentence_features(prompts, model, tokenizer)  # [V, D]
            labels[key] = words[int((text[c] @ f.float()).argmax())]
    meta = {"clip_model": datamodule.clip_model, "pretrained": datamodule.pretrained, "vocabulary": words}
    return labels, meta


def file_labeller(datamodule, parts: Sequence[str], file: str | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Labels from a CSV with the header ``image,attribute`` (image paths relative to the dataset's image
    folder, or absolute under it); rows for images that are not in the dataset's split are an error.

    Args:
        datamodule: The images' datamodule.
        parts: Ignored (every row of the CSV is kept).
        file: The CSV.
    """
    if not file:
        raise ValueError("the file labeller needs --file CSV (columns image,attribute)")
    path = Path(file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"attribute CSV not found: {path}")
    root = datamodule.image_root().resolve()
    known = {e[0] for entries in datamodule.subsets().values() for e in entries}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        for column in ("image", "attribute"):
            if column not in header:
                raise ValueError(f"{path}: no column {column!r} (header {header}); the CSV needs the header "
                                 "image,attribute")
        labels = {}
        for row in reader:
            row = {k.strip(): v for k, v in row.items() if k}
            image = row["image"].strip()
            if Path(image).is_absolute():
                try:
                    image = Path(image).resolve().relative_to(root).as_posix()
                except ValueError:
                    raise ValueError(f"{path}: image {row['image']} is not under the image folder {root}") from None
            if image not in known:
                raise ValueError(f"{path}: image {image} is not in the {type(datamodule).__name__} split (paths are "
                                 f"relative to {root}, e.g. {next(iter(sorted(known)), '?')})")
            labels[image] = normalize_label(row["attribute"], f"{image} (in {path})")
    if not labels:
        raise ValueError(f"{path}: no labels (rows image,attribute after the header)")
    return labels, {"source": str(path)}


def blip2_labeller(datamodule, parts: Sequence[str], question: str = BLIP2_QUESTION, model: str = BLIP2_MODEL,
                   batch_size: int = 8, device: str | None = None, generator: Callable | None = None,
                   ) -> tuple[dict[str, str], dict[str, Any]]:
    """BLIP-2's one-word answer per image, asked about the image's class (:mod:`stori_pl.data.blip2`).

    Args:
        datamodule: The images' datamodule.
        parts: Parts to label.
        question: Prompt with ``{}`` for the class name (default: BLIP-2's VQA format, see ``BLIP2_QUESTION``).
        model: Hugging Face BLIP-2 checkpoint.
        batch_size: Images per ``generate`` call.
        device: Where BLIP-2 runs (default: CUDA when available).
        generator: ``fn(images, prompts) -> answers`` standing in for BLIP-2 (tests).
    """
    entries = [e for part in parts for e in datamodule.subsets()[part]]
    images = [datamodule.image_root() / e[0] for e in entries]
    names = [datamodule.classnames[e[1]] for e in entries]
    generator = generator or load_blip2_generator(model, device)
    answers = blip2_labels(images, names, generator=generator, question=question, batch_size=batch_size)
    return {e[0]: a for e, a in zip(entries, answers)}, {"model": model, "question": question}


LABELLERS.update({"clip": clip_labeller, "file": file_labeller, "blip2": blip2_labeller})

__all__ = ["AttributeLabels", "LABELLERS", "NAMING_OPTIONS", "attribute_index", "command", "datamodule_labels",
           "default_label_file", "get_labeller", "label_words", "load_vocabulary", "make_labels", "normalize_label",
           "read_label_file", "read_labels", "resolve_label_file", "write_labels", "clip_labeller", "file_labeller",
           "blip2_labeller", "blip2_labels", "BLIP2_MODEL", "BLIP2_QUESTION"]
