"""Which sparse-autoencoder components of CLIP's image tower drive a classifier's score (pure torch).

A component is a latent ``k`` of a TopK SAE (:class:`stori_pl.image.sae.TopKSAE`) trained on the CLS
residual stream after vision block ``block``. For an image and a target text/class embedding ``t`` the target
is ``y = cos(f_img, t)``, where ``f_img`` is CLIP's image embedding with the CLS residual after ``block``
replaced by the SAE's output ``x̂ + (x − x̂).detach()`` (so ``f_img`` is the unchanged embedding, while
gradients reach the latents). For a stori-pl classifier ``t`` is a row of ``eval_class_embeddings()`` (SToRI,
zero-shot, TaskRes, CoOp, ...), so ``y = logit / logit_scale``.

Scores per image and component, ``[N, m]`` (methods of Dreyer et al., arXiv 2505.20229; we follow
``maxdreyer/attributing-clip`` experiments/compute_attribution_scores.py and experiments/eval_faithfulness.py):

- ``act_grad``: ``z_k · ∂y/∂z_k`` (attribution patching: first-order estimate of ``y − y(z_k := 0)``);
- ``logit_lens``: ``cos(cls_readout(d_k), t)`` for the unit decoder direction ``d_k`` (image-independent);
- ``act_logit_lens``: ``z_k · logit_lens_k``;
- ``energy``: ``z_k · ‖d_k‖`` (the decoder column's norm);
- ``random``: Gaussian noise on the image's positive components ``z > 0`` (a seeded baseline, as the authors').

Differences from the authors' code: gradients are taken per image (we sum ``y`` over a batch; they average,
which scales every score of a batch by ``1/B`` without changing rankings), and the SAE is spliced in through
:func:`stori_pl.image.tower.embed_with_cls_edit` (its public pieces: the residual stream up to ``block`` is
computed once, then edited many times) instead of a patched transformer ``forward`` with hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stori_pl.image.tower import (
    cls_readout,
    n_vision_blocks,
    pool_tokens,
    residual_stream,
    resolve_block,
    run_vision_blocks,
)
from stori_pl.interpret.concepts import concept_alignment

METHODS: tuple[str, ...] = ("act_grad", "act_logit_lens", "logit_lens", "energy", "random")
METHOD_LABELS = {"act_grad": "Act×Grad", "act_logit_lens": "Act×LogitLens", "logit_lens": "LogitLens",
                 "energy": "Energy", "random": "random"}


@dataclass
class ComponentScores:
    """Scores of every component for a batch of images.

    Attributes:
        codes: SAE latents ``z`` after TopK, ``[N, m]``.
        target: ``y = cos(f_img, t)`` of each image, ``[N]``.
        scores: method name -> scores ``[N, m]`` (``logit_lens`` repeated over images).
    """

    codes: torch.Tensor
    target: torch.Tensor
    scores: dict[str, torch.Tensor]


def sae_codes(sae, cls: torch.Tensor) -> torch.Tensor:
    """TopK latents ``z [N, m]`` of CLS activations ``[N, d]``."""
    return sae.topk(sae.encode(cls))


def decoder_columns(sae, chunk: int = 4096) -> torch.Tensor:
    """The decoder's columns ``[m, d]`` as they act (``decode(e_k) − decode(0)``; unit rows for a TopKSAE)."""
    m = sae.decoder_directions().shape[0]
    ref = next(sae.parameters())
    zero = sae.decode(torch.zeros(1, m, dtype=ref.dtype, device=ref.device))  # [1, d]
    eye = torch.eye(m, dtype=ref.dtype, device=ref.device)
    return torch.cat([sae.decode(rows) - zero for rows in eye.split(chunk)])  # [m, d]


def tower_prefix(model, images: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """The residual stream after ``block`` (run once, then edited many times) and the block as ``1..n``.

    Returns:
        ``(resid [N, T, d], block)``.
    """
    b = resolve_block(model, block)
    with torch.no_grad():
        return residual_stream(model, images, b), b


def edited_embedding(model, resid: torch.Tensor, block: int, edit: Callable) -> torch.Tensor:
    """Image embeddings ``[N, D]`` with the CLS of ``resid`` (after ``block``, 1..n) replaced by ``edit(cls)``
    and the remaining blocks run; the same as :func:`stori_pl.image.tower.embed_with_cls_edit` on the images."""
    x = torch.cat([edit(resid[:, 0])[:, None].to(resid.dtype), resid[:, 1:]], dim=1)
    return pool_tokens(model, run_vision_blocks(model, x, block + 1, n_vision_blocks(model)))


def cosine_target(model, resid: torch.Tensor, block: int, edit: Callable, targets: torch.Tensor) -> torch.Tensor:
    """``y = cos(edited_embedding(...), targets)`` per image, ``[N]`` (targets ``[N, D]`` or ``[D]``)."""
    emb = edited_embedding(model, resid, block, edit).float()  # [N, D]
    return F.cosine_similarity(emb, targets.to(emb).expand_as(emb), dim=-1)


def act_grad(model, sae, images: torch.Tensor, block: int, targets: torch.Tensor, keep_error: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Act×Grad ``z_k · ∂y/∂z_k`` of each image's components.

    Args:
        model: open_clip CLIP model (the classifier's ``clip``).
        sae: TopKSAE trained on the CLS residual after ``block``.
        images: Preprocessed images ``[N, 3, H, W]``.
        block: Vision block whose output CLS residual the SAE reads (1..n, or negative from the end).
        targets: Target embeddings ``[N, D]`` (one per image) or ``[D]``.
        keep_error: The residual trick (``y`` is CLIP's own score); False: the SAE reconstruction replaces the
            CLS (the authors' eval_faithfulness.py with ``add_residual = False``; gradients at ``x̂``).

    Returns:
        ``(z, attribution, y)``: latents ``[N, m]``, Act×Grad ``[N, m]``, target ``[N]`` (all detached).
    """
    resid, b = tower_prefix(model, images, block)
    store: dict[str, torch.Tensor] = {}

    def edit(cls: torch.Tensor) -> torch.Tensor:
        z = sae_codes(sae, cls).detach().requires_grad_()  # a leaf: ∂y/∂z only through the decoder
        store["z"] = z
        x_hat = sae.decode(z)
        return x_hat + (cls - x_hat).detach() if keep_error else x_hat  # == cls, gradient flows through z

    with torch.enable_grad():
        y = cosine_target(model, resid, b, edit, targets)  # [N]
        (grad,) = torch.autograd.grad(y.sum(), store["z"])  # images are independent: per-image gradients
    z = store["z"].detach()
    return z, z * grad, y.detach()


def logit_lens(model, sae, targets: torch.Tensor) -> torch.Tensor:
    """``cos(cls_readout(d_k), t)`` for each unit decoder direction and target: ``[m]`` for ``[D]``, else ``[T, m]``."""
    with torch.no_grad():
        directions = sae.decoder_directions()  # [m, d]
        read = F.normalize(cls_readout(model, directions.to(next(model.parameters()).dtype)).float(), dim=-1)
        t = F.normalize(targets.float().to(read.device), dim=-1)
        return t @ read.T  # [m] or [T, m]


def component_scores(model, sae, images: torch.Tensor, block: int, targets: torch.Tensor,
                     seed: int = 0, keep_error: bool = True) -> ComponentScores:
    """All five scores (:data:`METHODS`) of each image's components for its target.

    Args:
        model: open_clip CLIP model.
        sae: TopKSAE of ``block``.
        images: Preprocessed images ``[N, 3, H, W]``.
        block: The SAE's vision block.
        targets: ``[N, D]`` (one per image) or ``[D]``.
        seed: Seed of the random baseline.
        keep_error: See :func:`act_grad`.
    """
    z, attr, y = act_grad(model, sae, images, block, targets, keep_error)
    t = targets if targets.ndim == 2 else targets.expand(len(z), -1)
    lens = logit_lens(model, sae, t).to(z)  # [N, m]
    with torch.no_grad():
        norms = decoder_columns(sae).norm(dim=-1).to(z)  # [m]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(z.shape, generator=gen).to(z) * (z > 0)  # eval_faithfulness.py l. 130: among z > 0
    return ComponentScores(z, y, {"act_grad": attr, "act_logit_lens": z * lens, "logit_lens": lens,
                                  "energy": z * norms, "random": noise})


def class_attribution(model, sae, images: torch.Tensor, block: int, target: torch.Tensor,
                      batch_size: int = 64) -> torch.Tensor:
    """Mean Act×Grad ``[m]`` over ``images`` (e.g. one class's test images) for one target ``[D]``."""
    total = None
    for chunk in images.split(batch_size):
        _, attr, _ = act_grad(model, sae, chunk, block, target)
        total = attr.sum(0) if total is None else total + attr.sum(0)
    return total / len(images)


# ----------------------------------------------------------------------------------- unexpected reliance
@dataclass
class RelianceRow:
    """One of a class's most attributed components and how well the class's own vocabulary explains it.

    Attributes:
        component: Latent index.
        attribution: Mean Act×Grad over the class's images.
        share: ``attribution / Σ positive attributions`` of the class.
        label: Best entry of the general ∪ class vocabulary.
        alignment: Its alignment ``cos(c_k, T(label)) − cos(c_k, T(""))``.
        expected_label: Best entry of the class vocabulary.
        expected_alignment: Its alignment.
        unexpected: ``alignment − expected_alignment`` (0 when a class word is the best label).
        flagged: Unexpected reliance (see :func:`unexpected_reliance`).
    """

    component: int
    attribution: float
    share: float
    label: str
    alignment: float
    expected_label: str
    expected_alignment: float
    unexpected: float
    flagged: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def unexpected_reliance(attribution: torch.Tensor, concepts: torch.Tensor, general: dict[str, torch.Tensor],
                        expected: dict[str, torch.Tensor], empty: torch.Tensor, top: int = 10,
                        margin: float = 0.05, min_share: float = 0.02) -> list[RelianceRow]:
    """A class's ``top`` components by mean Act×Grad (those with a non-zero mean), each flagged when it is
    unexpected reliance.

    The score: ``unexpected_k = max_{w ∈ G ∪ E} a_k(w) − max_{w ∈ E} a_k(w)`` with ``a_k`` the alignment of
    :func:`stori_pl.interpret.concepts.concept_alignment` (the authors' ``cos(c_k, T(w)) − cos(c_k, T(""))``,
    ``c_k`` the mean embedding of component k's top images), ``E`` the class's expected vocabulary (its prompt words, CuPL sentences or a
    user file) and ``G`` a general vocabulary. It is 0 when a class word explains the component best, and large
    when some outside concept (a background colour, a watermark) explains it much better than any class word.
    Rule: flagged when ``unexpected_k ≥ margin`` and the component carries at least ``min_share`` of the
    class's positive attribution (so that noise-level components are not reported).

    Args:
        attribution: Mean Act×Grad of the class, ``[m]``.
        concepts: Concept embeddings ``[m, D]`` (mean image embedding of each latent's top images).
        general: Word -> text embedding ``[D]`` of the general vocabulary.
        expected: Word -> text embedding ``[D]`` of the class's expected vocabulary (not empty).
        empty: Text embedding of ``""`` ``[D]``.
        top: Components listed.
        margin: Alignment gap that flags a component.
        min_share: Least share of the positive attribution for a flag.
    """
    if not expected:
        raise ValueError("the class's expected vocabulary is empty (give class prompts, CuPL sentences or a file)")
    vocab = {**general, **expected}
    names, exp_names = list(vocab), list(expected)
    align = concept_alignment(concepts, torch.stack([vocab[w] for w in names]), empty)  # [m, V]
    exp_align = concept_alignment(concepts, torch.stack([expected[w] for w in exp_names]), empty)  # [m, E]
    positive = attribution.clamp(min=0).sum().clamp(min=1e-12)
    rows = []
    ranked = attribution.masked_fill(attribution == 0, float("-inf"))  # components active on the class's images
    for k in ranked.topk(min(top, int((attribution != 0).sum()))).indices.tolist():
        best, best_exp = int(align[k].argmax()), int(exp_align[k].argmax())
        gap = max(float(align[k, best] - exp_align[k, best_exp]), 0.0)  # ≥ 0 (E ⊆ G ∪ E) up to rounding
        share = float(attribution[k] / positive)
        rows.append(RelianceRow(k, float(attribution[k]), share, names[best], float(align[k, best]),
                                exp_names[best_exp], float(exp_align[k, best_exp]), gap,
                                gap >= margin and share >= min_share))
    return rows
