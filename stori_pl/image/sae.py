"""TopK sparse autoencoder on CLIP's residual stream: the *components* of Dreyer et al. (arXiv 2505.20229).

Follows ``TopKSAE`` of ``maxdreyer/attributing-clip`` (model_training/sae.py) and its training loss
(model_training/base_pl.py ``Vanilla.default_step``); pure torch, no Lightning
(:class:`stori_pl.models.sae.SparseAutoencoder` trains it).

Parametrization (same function and gradients as theirs, new-style parametrizations instead of the deprecated
``torch.nn.utils.weight_norm`` hooks):

- encoder ``Linear(d, m)`` with bias and weight normalization per latent (row ``k`` = ``g_k v_k / ‖v_k‖``,
  ``g`` trainable): :func:`torch.nn.utils.parametrizations.weight_norm` (``dim=0``), as their
  ``weight_norm(nn.Linear(d, m))``;
- decoder ``Linear(m, d, bias=False)`` with unit-norm columns (column ``k`` = decoder direction ``d_k`` =
  ``v_k / ‖v_k‖``): the explicit parametrization :class:`UnitColumns`; theirs is ``weight_norm(..., dim=1)``
  with the magnitude ``g`` filled with 1 and frozen — the same function of ``v``, so the same gradients;
- TopK keeps the ``k`` largest **pre-activations** of each token (no ReLU: a kept value may be negative, as
  in theirs) and zeroes the rest;
- loss ``100 · MSE(normalize(x̂), normalize(x))`` (their ``loss_fn: mse`` times 100, on L2-normalized vectors);
  no auxiliary / dead-latent loss (they have none; dead latents are only counted).

:meth:`TopKSAE.from_authors_state_dict` loads a checkpoint of their ``TopKSAE``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["TopKSAE", "UnitColumns", "DeadLatentTracker", "explained_variance"]

LOSS_SCALE = 100.0  # their Vanilla.default_step: ``100 * self.loss(...)``


class UnitColumns(nn.Module):
    """Parametrization ``v [d, m] -> v / ‖v‖`` per column (each latent's decoder direction has unit norm)."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v / v.norm(dim=0, keepdim=True)


class TopKSAE(nn.Module):
    """TopK sparse autoencoder ``x [N, d] -> z [N, m] (k non-zero) -> x̂ [N, d]``.

    Args:
        input_dim: Residual width ``d`` (768 for ViT-B, 128 for ``stori-toy``).
        n_latents: Dictionary size ``m`` (their ``hidden_dim``, 30000).
        k: Latents kept per token (their 64).
        add_residual: :meth:`forward` returns ``x̂ + (x − x̂).detach()`` (equal to ``x``, gradients through the
            latents; their attribution forward). Training uses :meth:`loss`, which does not depend on it.

    Example:
        >>> sae = TopKSAE(128, 512, k=8)
        >>> x_out, z_pre, z = sae(torch.randn(4, 128))   # x_out == input, z has 8 non-zeros per row
    """

    def __init__(self, input_dim: int, n_latents: int, k: int, add_residual: bool = True) -> None:
        super().__init__()
        if not 1 <= k <= n_latents:
            raise ValueError(f"k must be in 1..n_latents={n_latents}, got {k}")
        self.input_dim, self.n_latents, self.k, self.add_residual = input_dim, n_latents, k, add_residual
        self.encoder = weight_norm(nn.Linear(input_dim, n_latents), dim=0)
        self.decoder = nn.Linear(n_latents, input_dim, bias=False)
        parametrize.register_parametrization(self.decoder, "weight", UnitColumns())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., d] -> z_pre [..., m]``."""
        return self.encoder(x)

    def topk(self, z_pre: torch.Tensor) -> torch.Tensor:
        """Keep the ``k`` largest entries of each row of ``z_pre [..., m]``, zero the rest -> ``z [..., m]``."""
        idx = z_pre.topk(self.k, dim=-1).indices
        mask = torch.zeros_like(z_pre).scatter(-1, idx, 1.0)
        return z_pre * mask

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``z [N, m] -> x̂ [N, d]`` = ``z @ D`` with :meth:`decoder_directions` ``D``."""
        return self.decoder(z)

    def decoder_directions(self) -> torch.Tensor:
        """Unit-norm decoder direction of every latent, ``[m, d]`` (row ``k`` = ``d_k``)."""
        return self.decoder.weight.T

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [..., d] -> (x_out [..., d], z_pre [..., m], z [..., m])``.

        ``x_out`` is ``x̂ + (x − x̂).detach()`` when ``add_residual`` (numerically ``x``; gradients reach ``x``
        only through the latents), else ``x̂``. The returned ``z`` is the tensor ``x̂`` is decoded from, so
        ``∂y/∂z`` of any ``y`` computed from ``x_out`` is available (``z.retain_grad()``; attribution patching).
        """
        z_pre = self.encode(x)
        z = self.topk(z_pre)
        x_hat = self.decode(z)
        x_out = x_hat + (x - x_hat).detach() if self.add_residual else x_hat
        return x_out, z_pre, z

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, d] -> (x̂ [N, d], z [N, m])`` (no residual trick)."""
        z = self.topk(self.encode(x))
        return self.decode(z), z

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Training loss ``100 · MSE(normalize(x̂), normalize(x))`` (scalar) for a batch ``x [N, d]``."""
        x_hat, _ = self.reconstruct(x)
        return LOSS_SCALE * F.mse_loss(F.normalize(x_hat, dim=-1), F.normalize(x, dim=-1))

    @classmethod
    def from_authors_state_dict(cls, state: dict[str, torch.Tensor], k: int = 64) -> TopKSAE:
        """Build from a state dict of their ``TopKSAE`` (keys ``encoder.0.weight_g``, ``encoder.0.weight_v``,
        ``encoder.0.bias``, ``decoder.weight_v``; ``decoder.weight_g`` is 1 by construction)."""
        v_enc = state["encoder.0.weight_v"]  # [m, d]
        sae = cls(v_enc.shape[1], v_enc.shape[0], k)
        with torch.no_grad():
            sae.encoder.parametrizations.weight.original0.copy_(state["encoder.0.weight_g"])
            sae.encoder.parametrizations.weight.original1.copy_(v_enc)
            sae.encoder.bias.copy_(state["encoder.0.bias"])
            sae.decoder.parametrizations.weight.original.copy_(state["decoder.weight_v"])
        return sae


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖²`` over a batch ``[N, d]`` (1 = perfect, 0 = as good as the mean)."""
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return 1.0 - residual / total


class DeadLatentTracker:
    """Counts, per latent, the tokens seen since it last fired (was among the top ``k`` with a non-zero value).

    A latent is **dead** when it has not fired in the last ``window`` tokens. Until ``window`` tokens have been
    seen nothing counts as dead. (Theirs: the running mean activation value, halved every 10,000 samples, below
    10/50,000; a firing count is simpler to read and does not depend on the activation scale.)

    Args:
        n_latents: ``m``.
        window: Tokens without firing after which a latent is dead.
    """

    def __init__(self, n_latents: int, window: int = 10_000) -> None:
        self.window = window
        self.since = torch.zeros(n_latents, dtype=torch.long)  # tokens since last firing
        self.seen = 0

    def update(self, z: torch.Tensor) -> None:
        """Record a batch of latent codes ``z [N, m]``."""
        fired = (z.detach() != 0).any(dim=0).cpu()
        self.since += z.shape[0]
        self.since[fired] = 0
        self.seen += z.shape[0]

    def dead_fraction(self) -> float:
        """Share of latents dead now (0.0 before ``window`` tokens were seen)."""
        if self.seen < self.window:
            return 0.0
        return float((self.since >= self.window).float().mean())
