"""What a sparse-autoencoder component stands for: top-activating images, concept, label, alignment, clarity.

After Dreyer et al. (arXiv 2505.20229; ``maxdreyer/attributing-clip``):

- **top-activating images** of latent ``k``: the ``top_n`` images with the largest ``z_k`` (their
  preprocessing/compute_latent_features_minimal.py keeps the top 100 per latent, experiments use 20); only
  images where the latent fires (``z_k > 0``) count;
- **concept** ``c_k``: the mean CLIP image embedding of those images (experiments/find_relevant_semantics.py,
  ``sem_emb_sae``), normalized here (cosines do not change);
- **alignment** with a text ``t``: ``cos(c_k, T(t)) − cos(c_k, T(""))`` — the text embedded bare (their
  template ``"{}"``) and the empty prompt as reference; the authors' **label** of ``k`` is the vocabulary entry
  with the highest alignment (``label_by="alignment"``); by default stori-pl labels by
  :func:`selectivity_scores` over every image the latent fires on; the component's alignment is its label's;
- **clarity**: their ``clarity_score`` (utils/interpretability_scores.py) — the mean pairwise cosine
  similarity of the top images' embeddings (``(‖mean v̂‖² − 1/n) · n / (n − 1)``).

Public API (stable; :mod:`stori_pl.interpret` attribution code imports it):
:class:`ComponentTable` (``save``/``load``, ``top_paths(k)``, ``row(k)``), :func:`describe_components`,
:func:`top_activating`, :func:`concept_vectors`, :func:`clarity_score`, :func:`text_embeddings`,
:func:`concept_alignment`, :func:`load_vocabulary`, :data:`GENERAL_VOCABULARY`; labels are chosen by
:func:`selectivity_scores` (default) or the authors' alignment, and checked against known image attributes by
:func:`label_correctness` (:func:`firing_sets`, :func:`value_f1`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from stori_pl.utils import atomic_path
from stori_pl.data.features import cls_activations, image_features
from stori_pl.image.tower import cls_readout, n_vision_blocks
from stori_pl.text.clip import load_clip

__all__ = [
    "ComponentTable", "describe_components", "top_activating", "concept_vectors", "clarity_score",
    "text_embeddings", "concept_alignment", "load_vocabulary", "image_embeddings", "GENERAL_VOCABULARY",
    "TABLE_FORMAT", "selectivity_scores", "LABEL_METHODS", "firing_sets", "value_f1", "label_correctness",
    "LabelCorrectness",
]

GENERAL_VOCABULARY = Path(__file__).resolve().parents[1] / "assets" / "vocabulary.txt"
TABLE_FORMAT = "1"
LABEL_METHODS = ("selectivity", "alignment")


@torch.no_grad()
def top_activating(sae: torch.nn.Module, activations: torch.Tensor, top_n: int = 16,
                   batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top_n`` images with the largest latent value, per latent, streamed over ``activations``.

    Args:
        sae: A :class:`~stori_pl.image.sae.TopKSAE`.
        activations: ``[N, d]`` CLS activations, one row per image.
        top_n: Images kept per latent.
        batch_size: Rows encoded at once (memory ``(top_n + batch_size) · m``).

    Returns:
        ``(values [m, top_n], index [m, top_n])`` sorted by decreasing value; ``index`` is ``-1`` (and the value
        0) where the latent fires on fewer than ``top_n`` images.
    """
    m = sae.n_latents
    n = min(top_n, activations.shape[0])
    best_v = torch.zeros(0, m)
    best_i = torch.zeros(0, m, dtype=torch.long)
    for start in range(0, activations.shape[0], batch_size):
        chunk = activations[start:start + batch_size].float()
        z = sae.topk(sae.encode(chunk)).cpu()  # [b, m]
        idx = torch.arange(start, start + chunk.shape[0])[:, None].expand_as(z)
        v, pos = torch.cat([best_v, z]).topk(min(n, best_v.shape[0] + z.shape[0]), dim=0)
        best_i, best_v = torch.cat([best_i, idx]).gather(0, pos), v
    values, index = best_v.T.contiguous(), best_i.T.contiguous()  # [m, n]
    index[values <= 0] = -1
    values = values.clamp_min(0)
    if n < top_n:
        values = F.pad(values, (0, top_n - n))
        index = F.pad(index, (0, top_n - n), value=-1)
    return values, index


def _per_latent(fn, embeddings: torch.Tensor, index: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Apply ``fn(picked [c, n, D], mask [c, n, 1])`` to chunks of latents (memory ``chunk · n · D``)."""
    out = []
    for rows in index.split(chunk):
        mask = (rows >= 0).unsqueeze(-1).float()  # [c, n, 1]
        out.append(fn(embeddings[rows.clamp_min(0)] * mask, mask))
    return torch.cat(out)


def concept_vectors(embeddings: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Normalized mean embedding of each latent's top images: ``[N, D]``, ``[m, n]`` (-1 = none) -> ``[m, D]``
    (a zero row for a latent that never fires)."""
    return _per_latent(lambda v, mask: F.normalize(v.sum(1), dim=-1), embeddings.float(), index)


def clarity_score(embeddings: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine of each latent's top images (the authors' ``clarity_score``, with a variable
    number of images): ``[N, D]``, ``[m, n]`` -> ``[m]``; NaN for a latent with fewer than two images."""

    def clarity(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        count = mask.sum((1, 2))  # [c]
        summed = v.sum(1).pow(2).sum(-1)  # ‖Σ v̂‖² = n + Σ_{i≠j} cos
        value = (summed - count) / (count * (count - 1)).clamp_min(1)
        return torch.where(count >= 2, value, torch.full_like(value, float("nan")))

    return _per_latent(clarity, F.normalize(embeddings.float(), dim=-1), index)


@torch.no_grad()
def text_embeddings(clip_model: str, pretrained: str | None, texts: Sequence[str], template: str = "{}",
                    batch_size: int = 256) -> torch.Tensor:
    """Normalized CLIP text embeddings of ``template.format(t)`` for each text: ``[V, D]`` (the empty string
    gives the reference embedding ``T("")``)."""
    model, _, tokenizer = load_clip(clip_model, pretrained)
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer([template.format(t) for t in texts[start:start + batch_size]])
        out.append(F.normalize(model.encode_text(tokens.to(next(model.parameters()).device)).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def concept_alignment(concepts: torch.Tensor, texts: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """``cos(c_k, T(t)) − cos(c_k, T(""))`` for every component and text: ``[m, D]``, ``[V, D]``, ``[D]`` ->
    ``[m, V]`` (inputs need not be normalized)."""
    c = F.normalize(concepts.float(), dim=-1)
    return c @ F.normalize(texts.float(), dim=-1).T - (c @ F.normalize(empty.float(), dim=-1))[:, None]


def selectivity_scores(fires: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """How much each text's image similarity rises where each latent fires, in units of its spread over the images.

    ``(mean_{i: k fires} s_it − mean_{i: k silent} s_it) / std_i(s_it)`` with ``s_it = cos(image_i, T(t))``: a
    standardized mean difference (Cohen's d against the pooled spread). Unlike the alignment of the top images'
    mean embedding, it reads every image a latent fires on (not only its top ones, which share more than the latent
    selects for) and puts every text on one scale (a text that is close to every image, as a bare word of a general
    vocabulary can be, gains nothing).

    Args:
        fires: ``[N, m]`` bool, latent ``k`` active on image ``i`` (:func:`firing_sets`).
        similarity: ``[N, V]`` cosine of each image embedding with each text embedding.

    Returns:
        ``[m, V]`` (0 for a latent that fires on no image or on every one).
    """
    f, s = fires.float(), similarity.float()
    return _selectivity(f.T @ s, f.sum(0), s.sum(0), s.pow(2).sum(0), s.shape[0])


def _selectivity(fire_sum: torch.Tensor, n_fire: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor,
                 n: int) -> torch.Tensor:
    """:func:`selectivity_scores` from sums (streamed over images): ``Σ_{i fires} s [m, V]``, firing counts
    ``[m]``, ``Σ_i s`` and ``Σ_i s² [V]``, ``n`` images."""
    n_fire = n_fire[:, None]  # [m, 1]
    n_rest = n - n_fire
    diff = fire_sum / n_fire.clamp_min(1) - (total[None] - fire_sum) / n_rest.clamp_min(1)
    diff = diff * ((n_fire > 0) & (n_rest > 0))
    std = ((total_sq - total.pow(2) / n) / max(n - 1, 1)).clamp_min(0).sqrt()  # [V], unbiased as torch.std
    return diff / std[None].clamp_min(1e-12)


def load_vocabulary(source: str | Path | Sequence[str] | None = None) -> list[str]:
    """A label vocabulary: a list of texts, a text file (one entry per line, ``#`` comments) or None for the
    shipped general word list (:data:`GENERAL_VOCABULARY`, 300+ colors, shapes, textures, objects, scenes).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file or list holds no entry (names the file).
    """
    if source is None:
        source = GENERAL_VOCABULARY
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        words = [w.strip() for w in lines if w.strip() and not w.strip().startswith("#")]
        where = f"vocabulary file {path}"
    else:
        words, where = [str(w).strip() for w in source if str(w).strip()], "the vocabulary list"
    if not words:
        raise ValueError(f"{where} is empty: give one label per line (or leave it out for the shipped word list)")
    return list(dict.fromkeys(words))


@dataclass
class ComponentTable:
    """Per latent of an SAE: top images, concept, label, alignment, clarity (row ``k`` = latent ``k``).

    Attributes:
        image_paths: The images described (``top_index`` points into it).
        top_index: ``[m, n]`` long, each latent's top images by decreasing activation (-1 = none).
        top_activation: ``[m, n]`` their latent values (0 where none).
        concept: ``[m, D]`` normalized mean embedding of the top images (zero row: never fires).
        labels: ``m`` best vocabulary entries ("" for a latent that never fires).
        alignment: ``[m]`` alignment of the label (NaN: never fires).
        clarity: ``[m]`` mean pairwise cosine of the top images (NaN: fewer than two).
        vocabulary: The label vocabulary.
        clip_model, pretrained, block: The CLIP and vision block of the SAE.
        concept_model, concept_pretrained: The CLIP that embedded images and texts (by default the same).
        extra: JSON metadata (``label_by``: how the labels were chosen; ``label_prompts``: see the CLI).
        selectivity: ``[m]`` selectivity score of the label (:func:`selectivity_scores`; None in older tables).
    """

    image_paths: list[str]
    top_index: torch.Tensor
    top_activation: torch.Tensor
    concept: torch.Tensor
    labels: list[str]
    alignment: torch.Tensor
    clarity: torch.Tensor
    vocabulary: list[str]
    clip_model: str
    pretrained: str | None
    block: int
    concept_model: str = ""
    concept_pretrained: str | None = None
    extra: dict = field(default_factory=dict)
    selectivity: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.top_index.shape[0]

    def top_paths(self, k: int, n: int | None = None) -> list[str]:
        """Paths of latent ``k``'s top images (at most ``n``), by decreasing activation."""
        idx = [i for i in self.top_index[k].tolist() if i >= 0]
        return [self.image_paths[i] for i in idx[:n]]

    def fires(self) -> torch.Tensor:
        """``[m]`` bool: the latent fires on at least one described image."""
        return self.top_index[:, 0] >= 0

    def row(self, k: int) -> dict:
        """Latent ``k`` as plain data: label, alignment, clarity, mean top activation, top image paths."""
        acts = self.top_activation[k][self.top_index[k] >= 0]
        return {"component": k, "label": self.labels[k], "alignment": float(self.alignment[k]),
                "clarity": float(self.clarity[k]), "mean_activation": float(acts.mean()) if acts.numel() else 0.0,
                "top_images": self.top_paths(k)}

    def save(self, path: str | Path) -> None:
        """Write one safetensors file atomically (tensors + the rest as JSON in its metadata)."""
        tensors = {"top_index": self.top_index, "top_activation": self.top_activation, "concept": self.concept,
                   "alignment": self.alignment, "clarity": self.clarity,
                   **({} if self.selectivity is None else {"selectivity": self.selectivity})}
        meta = {"format": TABLE_FORMAT, "image_paths": self.image_paths, "labels": self.labels,
                "vocabulary": self.vocabulary, "clip_model": self.clip_model, "pretrained": self.pretrained,
                "block": self.block, "concept_model": self.concept_model,
                "concept_pretrained": self.concept_pretrained, "extra": self.extra}
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"stori_components": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> ComponentTable:
        """Read a table written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a component table (names the file).
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"component table not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["stori_components"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # noqa: BLE001 - any reading failure is one user error
            raise ValueError(f"{path} is not a stori-pl component table ({type(err).__name__})") from err
        if meta.get("format") != TABLE_FORMAT:
            raise ValueError(f"{path}: component table format {meta.get('format')} is not {TABLE_FORMAT}")
        return cls(image_paths=meta["image_paths"], labels=meta["labels"], vocabulary=meta["vocabulary"],
                   clip_model=meta["clip_model"], pretrained=meta["pretrained"], block=int(meta["block"]),
                   concept_model=meta["concept_model"], concept_pretrained=meta["concept_pretrained"],
                   extra=meta.get("extra", {}), **tensors)


def image_embeddings(paths: Sequence[str], acts: torch.Tensor, clip_model: str, pretrained: str | None, block: int,
                     concept_model: str, concept_pretrained: str | None, cache_dir=None) -> torch.Tensor:
    """Normalized image embeddings ``[N, D]`` for the concepts: read out of the CLS activations ``acts [N, d]``
    when they come from the last block of the same CLIP (exact, :func:`~stori_pl.image.tower.cls_readout`),
    else from the feature cache."""
    if (concept_model, concept_pretrained) == (clip_model, pretrained):
        model, _, _ = load_clip(clip_model, pretrained)
        if block == n_vision_blocks(model) and getattr(model.visual, "pool_type", "tok") == "tok":
            with torch.no_grad():
                out = [cls_readout(model, a.to(next(model.parameters()).device)).float().cpu()
                       for a in acts.split(4096)]
            return F.normalize(torch.cat(out), dim=-1)
    emb, _ = image_features(paths, concept_model, concept_pretrained, cache_dir=cache_dir, progress=False)
    return emb


@torch.no_grad()
def _streamed_selectivity(sae: torch.nn.Module, acts: torch.Tensor, emb: torch.Tensor, texts: torch.Tensor,
                          batch_size: int) -> torch.Tensor:
    """:func:`selectivity_scores` of every latent and text over ``acts [N, d]`` / ``emb [N, D]`` in chunks of
    images (memory ``batch_size · (m + V) + m · V``, not ``N · m``)."""
    m, v = sae.n_latents, texts.shape[0]
    fire_sum, n_fire = torch.zeros(m, v), torch.zeros(m)
    total, total_sq = torch.zeros(v), torch.zeros(v)
    for start in range(0, acts.shape[0], batch_size):
        f = firing_sets(sae, acts[start:start + batch_size], batch_size).float()  # [b, m]
        sim = emb[start:start + batch_size].float() @ texts.float().T  # [b, V]
        fire_sum += f.T @ sim
        n_fire += f.sum(0)
        total += sim.sum(0)
        total_sq += sim.pow(2).sum(0)
    return _selectivity(fire_sum, n_fire, total, total_sq, acts.shape[0])


def describe_components(sae_module: torch.nn.Module, clip_model: str, image_paths: Sequence[str | Path],
                        vocabulary: str | Path | Sequence[str] | None = None, top_n: int = 16, *,
                        pretrained: str | None = "from_sae", concept_model: str | None = None,
                        concept_pretrained: str | None = None, cache_dir: str | Path | None = None,
                        batch_size: int = 1024, label_by: str = "selectivity") -> ComponentTable:
    """Describe every latent of a trained SAE over a set of images.

    Args:
        sae_module: A :class:`~stori_pl.models.sae.SparseAutoencoder` (e.g. from
            :func:`~stori_pl.models.load_checkpoint`).
        clip_model: The CLIP whose activations are read; refused unless the SAE was trained on it.
        image_paths: Images to search for top activations (their activations and embeddings are cached).
        vocabulary: Label texts, a file, or None for the shipped general list (:func:`load_vocabulary`).
        top_n: Top images per latent (authors: 20 for concepts and clarity).
        pretrained: The CLIP's weights (default: the SAE's).
        concept_model, concept_pretrained: Another CLIP (and its weights) to embed images and labels (the
            authors use MobileCLIP-S2); default: the SAE's CLIP.
        cache_dir: Feature / activation cache folder.
        batch_size: Activations encoded by the SAE at once.
        label_by: How the label is chosen among the vocabulary: ``"selectivity"`` (default) — the entry whose
            image similarity rises most where the latent fires (:func:`selectivity_scores`, over every described
            image); ``"alignment"`` — the authors' entry of best alignment with the top images' concept. The
            table's ``alignment`` is the authors' score of the chosen label either way, ``selectivity`` its
            selectivity score.

    Returns:
        The :class:`ComponentTable`.

    Raises:
        ValueError: SAE of another CLIP/block (both named), empty vocabulary; BadImageError: unreadable image.
    """
    if label_by not in LABEL_METHODS:
        raise ValueError(f"label_by must be one of {', '.join(LABEL_METHODS)}, got {label_by!r}")
    words = load_vocabulary(vocabulary)
    h = sae_module.hparams
    sae_module.check_compatible(clip_model, h.block)
    pretrained = h.pretrained if pretrained == "from_sae" else pretrained
    cmodel = concept_model or clip_model
    cpre = pretrained if concept_model is None else concept_pretrained
    paths = [str(p) for p in image_paths]
    acts = cls_activations(paths, clip_model, pretrained, h.block, cache_dir, progress=False)  # [N, d]
    emb = image_embeddings(paths, acts, clip_model, pretrained, int(h.block), cmodel, cpre, cache_dir)  # [N, D]
    values, index = top_activating(sae_module.sae, acts, top_n, batch_size)
    concept = concept_vectors(emb, index)
    text = text_embeddings(cmodel, cpre, [*words, ""])
    scores = concept_alignment(concept, text[:-1], text[-1])  # [m, V]
    select = _streamed_selectivity(sae_module.sae, acts, emb, text[:-1], batch_size)  # [m, V]
    label_idx = (select if label_by == "selectivity" else scores).argmax(dim=1)  # [m]
    fires = index[:, 0] >= 0
    nan = torch.full((len(fires),), float("nan"))
    return ComponentTable(
        image_paths=paths, top_index=index, top_activation=values, concept=concept,
        labels=[words[i] if f else "" for i, f in zip(label_idx.tolist(), fires.tolist())],
        alignment=torch.where(fires, scores.gather(1, label_idx[:, None])[:, 0], nan),
        clarity=clarity_score(emb, index), vocabulary=words, clip_model=clip_model, pretrained=pretrained,
        block=int(h.block), concept_model=cmodel, concept_pretrained=cpre,
        selectivity=torch.where(fires, select.gather(1, label_idx[:, None])[:, 0], nan),
        extra={"label_by": label_by})


# ----------------------------------------------------------------------------------- label correctness
@torch.no_grad()
def firing_sets(sae: torch.nn.Module, activations: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Where each latent is active: ``[N, d]`` activations -> ``[N, m]`` bool (``z_k > 0`` after TopK)."""
    return torch.cat([sae.topk(sae.encode(chunk.float())).cpu() > 0 for chunk in activations.split(batch_size)])


def value_f1(fires: torch.Tensor, attributes: Sequence[Mapping[str, str]]
             ) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """F1 of each latent's firing set against the images having each attribute value.

    Args:
        fires: ``[N, m]`` bool, latent ``k`` active on image ``i`` (:func:`firing_sets`).
        attributes: ``N`` dicts ``{attribute: value}``, the images' known attributes (e.g. a toy folder's
            ``attributes.json``).

    Returns:
        ``(values, f1)``: the ``V`` ``(attribute, value)`` pairs seen, in first-seen order, and ``f1 [m, V]``
        (0 for a latent that never fires).
    """
    if fires.shape[0] != len(attributes):
        raise ValueError(f"{fires.shape[0]} firing rows but attributes of {len(attributes)} images")
    values = list(dict.fromkeys((a, str(v)) for row in attributes for a, v in row.items()))
    has = torch.tensor([[str(row.get(a)) == v for a, v in values] for row in attributes], dtype=torch.float32)
    f = fires.float()
    inter = f.T @ has  # [m, V]
    precision = inter / f.sum(0)[:, None].clamp_min(1)
    recall = inter / has.sum(0)[None].clamp_min(1)
    return values, 2 * precision * recall / (precision + recall).clamp_min(1e-12)


@dataclass
class LabelCorrectness:
    """How many labelled components name the attribute value they are most selective for.

    Attributes:
        labelled: Components whose label names an attribute value and that fire on at least ``min_fires`` images.
        right: Of these, the labels that name the value of best F1 (with at least ``min_f1``).
        rows: Per labelled component: ``component``, ``label``, ``labelled_value`` and ``best_value``
            (``"attribute=value"``), ``best_f1``, ``label_f1``, ``fires`` (images), ``right``.
    """

    labelled: int
    right: int
    rows: list[dict]

    @property
    def share(self) -> float:
        """``right / labelled`` (0 when nothing is labelled)."""
        return self.right / self.labelled if self.labelled else 0.0

    def to_dict(self) -> dict:
        return {"label_correctness": self.share, "labelled": self.labelled, "right": self.right, "rows": self.rows}


def label_correctness(fires: torch.Tensor, attributes: Sequence[Mapping[str, str]], labels: Sequence[str],
                      label_values: Mapping[str, tuple[str, str]], min_fires: int = 10,
                      min_f1: float = 0.0) -> LabelCorrectness:
    """A component's label is right when it names the attribute value the latent is most selective for: the value
    of best F1 of its firing set (:func:`value_f1`) over images with known attributes (held out from the images
    the labels were chosen on; the labels come from the text side, the attributes only check them).

    Args:
        fires: ``[N, m]`` bool firing sets (:func:`firing_sets`).
        attributes: ``N`` dicts ``{attribute: value}`` of the same images.
        labels: ``m`` component labels (a :class:`ComponentTable`'s ``labels``).
        label_values: ``label -> (attribute, value)`` it names; a label not in it (a word of a general
            vocabulary) leaves the component unlabelled for this check.
        min_fires: Least images a component fires on to count (noise-level firing sets have no selectivity).
        min_f1: Least F1 of the best value for a label to be right (0: the best value, however weak).
    """
    if len(labels) != fires.shape[1]:
        raise ValueError(f"{len(labels)} labels for {fires.shape[1]} latents")
    values, f1 = value_f1(fires, attributes)
    where = {v: i for i, v in enumerate(values)}
    count = fires.sum(0)
    rows = []
    for k, label in enumerate(labels):
        named = label_values.get(label)
        if named is None or int(count[k]) < min_fires:
            continue
        best = int(f1[k].argmax())
        label_f1 = float(f1[k, where[tuple(named)]]) if tuple(named) in where else 0.0
        right = values[best] == tuple(named) and float(f1[k, best]) >= min_f1
        rows.append({"component": k, "label": label, "labelled_value": "=".join(named),
                     "best_value": "=".join(values[best]), "best_f1": float(f1[k, best]), "label_f1": label_f1,
                     "fires": int(count[k]), "right": bool(right)})
    return LabelCorrectness(len(rows), sum(r["right"] for r in rows), rows)
