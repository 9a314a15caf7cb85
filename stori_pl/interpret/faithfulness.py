"""Faithfulness of component attributions: the cumulative-deletion protocol (pure torch).

For each image, each method ranks the SAE components by its score (:mod:`stori_pl.interpret.components`);
the image's top-1, top-2, ..., top-S components are set to zero in the SAE code (cumulatively) and the target
``y = cos(f_img, t)`` is measured again. A faithful method picks the components whose removal lowers ``y``
most, so its curve drops fastest: the **area** (mean of the curve over steps 0..S and images) is lower.

Follows ``maxdreyer/attributing-clip`` experiments/eval_faithfulness.py ("deletion (local)": per-image
rankings by ``topk`` of the scores, l. 145; steps 0..S, l. 154–162; the mean as area, l. 174). The default is
the authors' protocol: the SAE's error term is dropped (``sae.add_residual = False``, l. 59, for the scores and
the deletions alike), so the whole curve is of the SAE reconstruction (``keep_error=False``).
``keep_error=True`` (a stori-pl option) keeps the reconstruction error ``x − x̂`` of the undeleted code fixed
(step 0 is then CLIP's true score) — and changes which method wins (docs/components.md). The target is the
classifier's class embedding for the image's label (theirs: the text of the class name); we report areas in
cosine units, they in % (×100).
"""

from __future__ import annotations

import torch

from stori_pl.interpret.components import cosine_target, sae_codes, tower_prefix


def deletion_edit(sae, order: torch.Tensor, n_deleted: int, keep_error: bool = False):
    """CLS edit that zeroes each image's first ``n_deleted`` components of ``order [N, S]``."""

    def edit(cls: torch.Tensor) -> torch.Tensor:
        z = sae_codes(sae, cls)  # [N, m]
        x_hat = sae.decode(z)
        if n_deleted:
            z = z.scatter(1, order[:, :n_deleted].to(z.device), 0.0)
        out = sae.decode(z) + (cls - x_hat) if keep_error else sae.decode(z)
        return out.to(cls.dtype)

    return edit


def deletion_curves(model, sae, images: torch.Tensor, block: int, targets: torch.Tensor,
                    scores: dict[str, torch.Tensor], steps: int = 10, keep_error: bool = False
                    ) -> dict[str, torch.Tensor]:
    """The target after deleting each image's top-0..``steps`` components, per method.

    Args:
        model: open_clip CLIP model.
        sae: TopKSAE of ``block``.
        images: Preprocessed images ``[N, 3, H, W]``.
        block: The SAE's vision block.
        targets: ``[N, D]`` or ``[D]``.
        scores: Method -> scores ``[N, m]`` (e.g. ``component_scores(...).scores``).
        steps: Components deleted at the last step.
        keep_error: Keep the reconstruction error (step 0 = CLIP's score); False (default) = the authors'
            protocol (``add_residual = False``).

    Returns:
        Method -> curve ``[steps + 1, N]``.
    """
    out = {}
    resid, b = tower_prefix(model, images, block)
    with torch.no_grad():
        for name, s in scores.items():
            order = s.topk(steps, dim=-1).indices  # [N, steps]
            out[name] = torch.stack([
                cosine_target(model, resid, b, deletion_edit(sae, order, i, keep_error), targets)
                for i in range(steps + 1)]).cpu()
    return out


def deletion_areas(curves: dict[str, torch.Tensor]) -> dict[str, float]:
    """Area of each method's curve: the mean over steps and images (lower = more faithful)."""
    return {name: float(c.mean()) for name, c in curves.items()}


def area_std_error(curve: torch.Tensor) -> float:
    """Standard error of the area over images (``curve [S + 1, N]``)."""
    per_image = curve.mean(0)
    return float(per_image.std() / max(len(per_image), 1) ** 0.5) if len(per_image) > 1 else 0.0
