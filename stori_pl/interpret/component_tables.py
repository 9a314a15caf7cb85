"""The component table a command works with: the classes' expected concepts (:func:`expected_vocabulary`), the
SAE's :class:`~stori_pl.interpret.concepts.ComponentTable` kept beside its checkpoint (:func:`component_table`)
and its rows and vocabulary as the views show them (:func:`table_row`, :func:`table_vocabulary`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stori_pl.data.features import list_images
from stori_pl.interpret.concepts import ComponentTable, describe_components, text_embeddings
from stori_pl.interpret.viz.components import STRIP_IMAGES
from stori_pl.text.function_words import is_function_word


def expected_vocabulary(classifier, path: Path | None, source: str = "class_name") -> dict[str, list[str]]:
    """Each class's expected concepts: the JSON file ``{class: [entries]}``, else from the classifier's prompts:
    ``class_name`` (the words of the class name), ``prompt_words`` (content words of its template and CuPL
    prompts) or ``cupl_sentences`` (its CuPL sentences, whole).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, not such a JSON object, or has an empty list.
    """
    if path is None:
        ps, out = classifier.prompt_set, {}
        for name, base, cupl in zip(ps.classnames, ps.base, ps.cupl):
            texts = [name] if source == "class_name" else cupl if source == "cupl_sentences" else base + cupl
            if source == "cupl_sentences":
                out[name] = list(texts) or [name]
                continue
            words = [w.strip(".,;:!?()\"'").lower() for t in texts for w in t.split()]
            out[name] = list(dict.fromkeys(w for w in words if w and not is_function_word(w)))
        return out
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} not found")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"vocabulary file {path} is empty: give a JSON object {{class: [words or phrases]}}")
    try:
        vocab = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"vocabulary file {path} is not JSON ({err}); give {{class: [words or phrases]}}") from err
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"vocabulary file {path} must be a non-empty JSON object {{class: [words or phrases]}}")
    empty = [c for c, v in vocab.items() if not isinstance(v, list) or not [w for w in v if str(w).strip()]]
    if empty:
        raise ValueError(f"vocabulary file {path}: no entries for class(es) {', '.join(map(repr, empty))}")
    return {c: [str(w) for w in v if str(w).strip()] for c, v in vocab.items()}


def default_table_path(sae: str | Path) -> Path:
    """Where the component table of the SAE checkpoint ``sae`` is kept: ``<sae>.components.safetensors``."""
    return Path(f"{sae}.components.safetensors")


def component_table(sae: str | Path, module, classifier, table: Path | None = None,
                    concept_images: Path | None = None, labels: str | None = None,
                    label_prompts: dict[str, str] | None = None) -> ComponentTable:
    """The SAE's :class:`~stori_pl.interpret.concepts.ComponentTable`: ``table``, else the one kept beside the
    SAE checkpoint (:func:`default_table_path`), else described over the images under ``concept_images`` (and
    kept there for the next call). Refused (both named) when made for another CLIP, block or SAE size.

    Args:
        sae: The SAE checkpoint path (the table is kept beside it).
        module: The loaded :class:`~stori_pl.models.sae.SparseAutoencoder`.
        classifier: The classifier (its CLIP names the table's).
        table: A component table file to use.
        concept_images: Images to describe the components over (when there is no table yet).
        labels: Label vocabulary file for describing (None: the shipped one).
        label_prompts: ``label -> prompt that embeds it``: describe with these prompts, show the short labels.
    """
    clip, kept = classifier.hparams.clip_model, default_table_path(sae)
    path = table if table is not None else kept if kept.is_file() and concept_images is None else None
    if path is not None:
        loaded = ComponentTable.load(path)
        if loaded.clip_model != clip or int(loaded.block) != module.block or len(loaded) != module.sae.n_latents:
            raise ValueError(f"component table {path} describes an SAE of CLIP {loaded.clip_model!r} block "
                             f"{loaded.block} with {len(loaded)} latents, not this SAE of CLIP {clip!r} block "
                             f"{module.block} with {module.sae.n_latents}")
        return loaded
    if concept_images is None:
        raise ValueError(f"no component table for {sae}: give --concept_images DIR once (images to describe the "
                         "components over, e.g. the SAE's training images) or --table TABLE")
    prompts = label_prompts or {}
    described = describe_components(module, clip, list_images(concept_images), list(prompts.values()) or labels,
                                    pretrained=classifier.hparams.pretrained)
    if prompts:  # short labels; the prompts stay the vocabulary (what was embedded)
        short = {prompt: label for label, prompt in prompts.items()}
        described.labels = [short.get(label, label) for label in described.labels]
        described.extra["label_prompts"] = prompts
    described.save(kept)
    print(f"described {len(described)} components over {len(described.image_paths)} images; kept in {kept}")
    return described


def table_embeddings(table, texts: list[str]) -> torch.Tensor:
    """Normalized text embeddings ``[T, D]`` of ``texts`` by the table's concept CLIP (as its labels; a text with
    a prompt in the table's ``extra["label_prompts"]`` is embedded through that prompt)."""
    prompts = table.extra.get("label_prompts", {})
    return text_embeddings(table.concept_model or table.clip_model, table.concept_pretrained,
                           [prompts.get(t, t) for t in texts])


def table_vocabulary(table) -> dict[str, torch.Tensor]:
    """The table's label vocabulary: label -> text embedding ``[D]``."""
    short = {prompt: label for label, prompt in table.extra.get("label_prompts", {}).items()}
    return {short.get(t, t): e for t, e in zip(table.vocabulary, table_embeddings(table, table.vocabulary))}


def table_row(table, k: int, score: float) -> dict:
    """A view row (see :mod:`stori_pl.interpret.viz.components`) of component ``k`` from the component table."""
    return {"component": int(k), "score": float(score), "label": table.labels[k],
            "alignment": float(table.alignment[k]), "clarity": float(table.clarity[k]),
            "images": table.top_paths(k, STRIP_IMAGES)}
