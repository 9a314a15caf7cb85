"""Which SAE components of CLIP's image tower drive a classifier's score for an image (or a class over a split).

Examples::

    stori components runs/zero_shot/version_0/checkpoints/last.ckpt --sae runs/sae/version_0/checkpoints/last.ckpt --image photo.png
    stori components last.ckpt --sae sae.ckpt --image photo.png --compare true --html components.html
    stori components last.ckpt --sae sae.ckpt --split test --class_name "striped red circle" --root data
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from stori_pl.cli.component_inputs import (
    check_class,
    label_check,
    load_images,
    load_matching_sae,
    split_images,
)
from stori_pl.data.features import list_images
from stori_pl.interpret.component_tables import (
    component_table,
    expected_vocabulary,
    table_embeddings,
    table_row,
    table_vocabulary,
)
from stori_pl.interpret.attribution import as_image_feature, attribute
from stori_pl.interpret.components import class_attribution, component_scores, unexpected_reliance
from stori_pl.interpret.viz import render_html
from stori_pl.interpret.viz.components import components_section, format_rows, insert_sections, page
from stori_pl.models import ClipClassifier, load_checkpoint
from stori_pl.toy.data import known_attributes
from stori_pl.toy.images import attribute_vocabulary
from stori_pl.toy.world import attribute_prompts
from stori_pl.utils import atomic_write

COMPARED = {"Logit Lens": "logit_lens", "Act×LogitLens": "act_logit_lens"}
IMAGE_LEGEND = ("score = Act×Grad z_k·∂y/∂z_k with y = cos(image embedding, class embedding): first-order effect "
                "of removing component k (the image's active components, best first; negative = it lowers y); "
                "label/alignment/clarity from the component table")
CLASS_LEGEND = ("score = mean Act×Grad over the class's images; unexpected = best alignment of any vocabulary entry "
                "minus the best alignment of the class's own words; flagged (UNEXPECTED) when >= margin and the "
                "component holds >= min_share of the class's positive attribution")


def components(ckpt: str, sae: str | None = None, image: Path | None = None, class_name: str | None = None,
               split: Literal["train", "val", "test"] | None = None, top: int = 10, html: Path | None = None,
               compare: bool = False, vocabulary: Path | None = None,
               expected: Literal["class_name", "prompt_words", "cupl_sentences"] = "class_name", data: str = "ToyShapes",
               root: Path = Path("data"), max_images: int = 100, margin: float = 0.05, min_share: float = 0.02,
               table: Path | None = None, concept_images: Path | None = None, labels: str | None = None,
               pretrained: str | None = None) -> int:
    """Top SAE components of one image (--image) or of a class over a split (--split).

    Args:
        ckpt: Checkpoint of any stori-pl classifier (SToRI, zero-shot, TaskRes, CoOp, ...).
        sae: Sparse-autoencoder checkpoint (stori fit --config sae/...) of the same CLIP (required).
        image: Explain this image: its top components for --class_name (default: the predicted class).
        class_name: Class whose score is explained (default: predicted class; with --split: every class).
        split: Class level: aggregate over this split of --data and flag unexpected reliance.
        top: Components listed.
        html: Also write a self-contained HTML page (tables with strips of top-activating images).
        compare: Show the Logit Lens and Act×LogitLens rankings beside Act×Grad.
        vocabulary: JSON file {class: [words or phrases]} of each class's expected concepts (default: --expected).
        expected: Expected concepts of a class without --vocabulary: the words of its name, the content words of
            its prompts, or its CuPL sentences.
        data: Datamodule of --split (a class of stori_pl.data or stori_pl.toy.data, e.g. DTD, ToyShapes).
        root: Dataset root of --data.
        max_images: At most this many images per class with --split.
        margin: Unexpected-reliance threshold on the alignment gap.
        min_share: Least share of a class's positive attribution for a flag.
        table: Component table of the SAE (labels, alignment, clarity, top images; written by
            ComponentTable.save); default: SAE.components.safetensors beside the SAE checkpoint.
        concept_images: Describe the components over the images under this folder (e.g. the SAE's training
            images) and keep the table beside the SAE checkpoint.
        labels: With --concept_images: label vocabulary, a file (one entry per line) or "toy" (the toy world's
            attribute values, embedded through caption-style prompts: the tiny CLIP saw only captions);
            default: the shipped general word list.
        pretrained: Override the checkpoint's CLIP weights (open_clip tag or local file), e.g. offline.

    Returns:
        Exit status 0.

    Raises:
        FileNotFoundError: No such checkpoint, SAE, image or vocabulary file.
        ValueError: An SAE of another CLIP or block (both named), an unreadable image (its path), an unknown
            class, an empty vocabulary file, or neither/both of --image and --split.
    """
    if (image is None) == (split is None):
        raise ValueError("give either --image IMG (one image) or --split test (class level), not both/neither")
    if top < 1:
        raise ValueError(f"--top must be >= 1 (got {top})")

    classifier = load_checkpoint(ckpt, expect=ClipClassifier, **({} if pretrained is None else {"pretrained": pretrained}))
    sae_module = load_matching_sae(sae, classifier)
    toy = labels == "toy"
    components_table = component_table(sae, sae_module, classifier, table, concept_images, None if toy else labels,
                                       toy_label_prompts() if toy else None)
    if concept_images is not None:  # toy images: are the labels right?
        concept_paths = list_images(concept_images)
        attributes = known_attributes(concept_paths)
        if attributes is not None:
            label_check(components_table, sae_module, concept_paths, attributes)
    if image is not None:
        section = explain_image_components(classifier, sae_module, components_table, image, class_name, top, compare)
    else:
        expected_words = expected_vocabulary(classifier, vocabulary, expected)
        names = [check_class(classifier, class_name)] if class_name else list(classifier.classnames)
        section = explain_split(classifier, sae_module, components_table, data, root, split, names, expected_words, top,
                                max_images, margin, min_share)
    if html is not None:
        write_components_page(html, section, ckpt, sae, classifier.hparams.clip_model, sae_module.block)
    return 0


def write_components_page(html: Path, sections: list[str], ckpt: str, sae: str, clip_model: str, block: int) -> None:
    """``stori components --html``: one page of the component sections, written atomically."""
    with atomic_write(html, "w", encoding="utf-8") as f:
        f.write(page(f"SAE components — {Path(ckpt).name}", sections,
                     intro=f"{ckpt}; SAE {sae} (CLIP {clip_model}, block {block})"))
    print(f"\nwrote {html}")


def toy_label_prompts() -> dict[str, str]:
    """Toy label -> the caption-style prompt that embeds it (``"black background"`` -> ``"a shape on a black
    background."``): the tiny CLIP saw only captions, and labels bare words poorly (docs/components.md)."""
    return {label: attribute_prompts(key)[value][0] for label, (key, value) in attribute_vocabulary().items()}


def image_component_rows(classifier, sae_module, table, image: Path, class_name: str | None, top: int,
                         compare: bool) -> tuple[str, list[dict], dict[str, list[int]]]:
    """``(class explained, rows by Act×Grad, rankings of the compared methods)`` for one image."""
    images = load_images(classifier, [Path(image)])  # [1, 3, H, W]
    with torch.no_grad():
        emb = classifier.clip.encode_image(images).float()  # [1, D]
        targets = classifier.image_class_embeddings(emb)[0].float()  # [C, D], held fixed while attributing
    if class_name is None:
        class_name = classifier.classnames[int(classifier(emb, targets).argmax())]
    c = classifier.classnames.index(check_class(classifier, class_name))
    result = component_scores(classifier.clip, sae_module.sae, images, sae_module.block, targets[c])
    scores, z = result.scores, result.codes[0]
    active = scores["act_grad"][0].masked_fill(z == 0, float("-inf"))  # rank the image's active components
    order = active.topk(min(top, int((z != 0).sum()))).indices.tolist()
    rows = [{**table_row(table, k, scores["act_grad"][0, k]), "activation": float(z[k])} for k in order]
    ranks = {label: scores[m][0].topk(top).indices.tolist() for label, m in COMPARED.items()} if compare else {}
    return class_name, rows, ranks


def explain_image_components(classifier, sae_module, table, image: Path, class_name: str | None, top: int,
                             compare: bool, color: bool = False) -> list[str]:
    """Print one image's top components; returns the HTML sections."""
    name, rows, ranks = image_component_rows(classifier, sae_module, table, image, class_name, top, compare)
    title = f"{image}: top {len(rows)} components for {name!r} (Act×Grad)"
    print()
    print(format_rows(rows, title, ranks))
    print(f"  ({IMAGE_LEGEND}" + ("; the compared columns list those methods' top components" if ranks else "")
          + ")")
    return [components_section(title, rows, IMAGE_LEGEND, image=image, compare=ranks)]


def explain_split(classifier, sae_module, table, data: str, root: Path, split: str, names: list[str],
                  expected: dict[str, list[str]], top: int, max_images: int, margin: float,
                  min_share: float) -> list[str]:
    """Class-level lists (mean Act×Grad over the split's images of each class, unexpected reliance flagged)."""
    paths = split_images(data, root, split, classifier, max_images)
    targets = classifier.eval_class_embeddings()
    general = table_vocabulary(table)
    empty = table_embeddings(table, [""])[0]
    sections, n_flagged = [], 0
    print(f"({CLASS_LEGEND})")
    for name in names:
        if name not in paths:
            print(f"\n{name}: no {split} images")
            continue
        words = expected.get(name)
        if not words:
            raise ValueError(f"no expected vocabulary for class {name!r} (add it to the vocabulary file)")
        images = load_images(classifier, paths[name])
        attr = class_attribution(classifier.clip, sae_module.sae, images, sae_module.block,
                                 targets[classifier.classnames.index(name)])
        found = unexpected_reliance(attr, table.concept, general, dict(zip(words, table_embeddings(table, words))),
                                    empty, top=top, margin=margin, min_share=min_share)
        rows = [{**table_row(table, r.component, r.attribution), **r.to_dict(), "score": r.attribution}
                for r in found]
        n_flagged += sum(r.flagged for r in found)
        title = f"{name}: top {len(rows)} components over {len(images)} {split} images (mean Act×Grad)"
        print()
        print(format_rows(rows, title, class_level=True))
        sections.append(components_section(title, rows, CLASS_LEGEND, class_level=True))
    print(f"\n{n_flagged} component(s) flagged as unexpected reliance (--margin {margin}, --min_share {min_share})")
    return sections


def explain_with_components(classifier, sae: str, image: Path, classes: list[str] | None, top: int,
                            html: Path | None, target: str = "log_prob", table: Path | None = None,
                            concept_images: Path | None = None) -> None:
    """``stori explain --image IMG --sae SAE``: the image's top components for ``classes`` (default: the
    predicted class) after the word attributions; with ``html`` one page with both."""
    module = load_matching_sae(sae, classifier)
    table = component_table(sae, module, classifier, table, concept_images)
    names = classes or [None]
    sections = [s for name in names
                for s in explain_image_components(classifier, module, table, image, name, top, compare=False)]
    if html is None:
        return
    feature = as_image_feature(classifier, image)
    if classes is None:
        classes = [classifier.classnames[int(classifier.classify_features(feature[None])[0].argmax())]]
    words = {name: attribute(classifier, feature, classifier.classnames.index(name), target=target).prompts
             for name in classes}
    document = render_html(words, title=f"Why {Path(image).name}: words and image components", signed=True,
                           intro=f"word attributions (d {target} / d word log-weight), then SAE components")
    with atomic_write(html, "w", encoding="utf-8") as f:
        f.write(insert_sections(document, sections))
    print(f"\nwrote {html}")
