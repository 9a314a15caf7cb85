"""``SparseAutoencoder``: the LightningModule training a :class:`stori_pl.image.sae.TopKSAE` on cached CLS
activations (:class:`stori_pl.data.activations.ActivationData`) with ``stori fit --config sae/<name>.yaml``.

Thin: the SAE, its loss and the dead-latent count are pure torch in :mod:`stori_pl.image.sae`. Recipe of
``maxdreyer/attributing-clip`` (model_training/train_sae.py, utils/training_utils.py, configs/train_sae):
AdamW with lr 2e-4, eps 1e-7 and torch's default weight decay 0.01 (their ``get_optimizer`` does not pass
theirs on), optionally MultiStepLR (``milestones``, gamma 0.1, per epoch; theirs [24, 28] of 30 epochs); their
gradient clipping (1.0) is a trainer option in the configs.

Logged to TensorBoard: ``train/loss``, ``train/explained_variance`` (per step; on L2-normalized activations and
reconstructions, what the scale-free loss fits), ``train/dead_fraction``
(latents that did not fire in the last ``dead_window`` training activations, see
:class:`~stori_pl.image.sae.DeadLatentTracker`), and per epoch ``val/loss``, ``val/explained_variance``
(over the whole val split), ``val/dead_fraction`` (latents that fire on no val activation).

For attribution, ``module.sae(cls)`` returns ``(x_out, z_pre, z)`` with ``x_out`` equal to ``cls`` and gradients
through ``z``; pass ``lambda c: module.sae(c)[0]`` (keeping ``z``) as the edit of
:func:`stori_pl.image.tower.embed_with_cls_edit` at ``module.block``.

The checkpoint holds the SAE tensors only (no CLIP weights) and a ``"stori"`` entry naming the CLIP, the
block (resolved to 1..n) and the SAE shape; ``stori_pl.models.load_checkpoint(path, expect=SparseAutoencoder)`` loads it (then
:meth:`SparseAutoencoder.check_compatible` refuses another CLIP or block).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from stori_pl.image.tower import resolve_block_of, vision_shape
from stori_pl.models.checkpoint import CheckpointLoading
from stori_pl.image.sae import DeadLatentTracker, TopKSAE, explained_variance
from stori_pl import __version__

__all__ = ["SparseAutoencoder", "SAE_CHECKPOINT_FORMAT"]

SAE_CHECKPOINT_FORMAT = 1


class SparseAutoencoder(CheckpointLoading, L.LightningModule):
    """TopK SAE on the CLS residual stream after one vision block of a CLIP.

    Args:
        clip_model: open_clip model whose activations it reads (``stori-toy``, ``ViT-B-16``, ...).
        pretrained: Its weights (recorded; the SAE only fits the activations of these weights).
        block: Vision block (1-indexed, -1 = last; the authors use the last, -2 for ViT-L/14-336).
        n_latents: Dictionary size ``m`` (authors: 30,000 for every CLIP; default 8192 = ~10x a ViT-B width,
            trains on a CPU-sized split; the shipped ImageNet config uses 30,000).
        k: Latents kept per activation (authors: 64).
        lr: AdamW learning rate (authors: 2e-4).
        weight_decay: AdamW weight decay (authors: torch's default 0.01).
        milestones: Epochs at which the lr is multiplied by 0.1 (authors: [24, 28]); None: constant.
        dead_window: Training activations without firing after which a latent counts as dead.
        seed: Seed of the SAE's initialization.
    """

    def __init__(self, clip_model: str = "stori-toy", pretrained: str | None = "builtin", block: int = -1,
                 n_latents: int = 8192, k: int = 64, lr: float = 2e-4, weight_decay: float = 0.01,
                 milestones: list[int] | None = None, dead_window: int = 10_000, seed: int = 0) -> None:
        super().__init__()
        width, _ = vision_shape(clip_model)
        block = resolve_block_of(clip_model, block)
        self.save_hyperparameters()
        self.hparams.block = block
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.sae = TopKSAE(width, n_latents, k)
        self.tracker = DeadLatentTracker(n_latents, dead_window)
        self._val: dict[str, Any] = {}

    @property
    def block(self) -> int:
        """The vision block (1..n) whose CLS activations this SAE reads."""
        return int(self.hparams.block)

    def check_compatible(self, clip_model: str, block: int) -> None:
        """Refuse activations of another CLIP or block.

        Raises:
            ValueError: naming both CLIPs and both blocks.
        """
        try:
            other = resolve_block_of(clip_model, block)
        except ValueError:
            other = block
        if clip_model != self.hparams.clip_model or other != self.block:
            raise ValueError(
                f"the sparse autoencoder was trained on CLIP {self.hparams.clip_model!r} block {self.block}, "
                f"not on CLIP {clip_model!r} block {other}: train one for that CLIP and block "
                "(stori fit --config sae/...)")

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "block") and hasattr(dm, "clip_model"):
            self.check_compatible(dm.clip_model, dm.block)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`TopKSAE.forward`: ``x [N, d] -> (x_out, z_pre, z)``."""
        return self.sae(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (x,) = batch  # [B, d]
        loss = self.sae.loss(x)
        with torch.no_grad():
            x_hat, z = self.sae.reconstruct(x)
            self.tracker.update(z)
        ev = explained_variance(F.normalize(x, dim=-1), F.normalize(x_hat, dim=-1))
        self.log_dict({"train/loss": loss, "train/explained_variance": ev,
                       "train/dead_fraction": self.tracker.dead_fraction()}, prog_bar=True)
        return loss

    def _eval_step(self, batch: list[torch.Tensor]) -> None:
        (x,) = batch
        x_hat, z = self.sae.reconstruct(x)
        v = self._val
        v["loss"] = v.get("loss", 0.0) + self.sae.loss(x).item() * x.shape[0]
        x, x_hat = F.normalize(x, dim=-1), F.normalize(x_hat, dim=-1)  # explained variance of directions
        v["n"] = v.get("n", 0) + x.shape[0]
        v["sse"] = v.get("sse", 0.0) + (x - x_hat).pow(2).sum().item()
        v["sum"] = v.get("sum", 0) + x.double().sum(0)
        v["sq"] = v.get("sq", 0.0) + x.double().pow(2).sum().item()
        v["fired"] = v.get("fired", torch.zeros(self.sae.n_latents, dtype=torch.bool, device=x.device)) | (z != 0).any(0)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def _eval_epoch_end(self, stage: str) -> None:
        v, self._val = self._val, {}
        if not v:
            return
        total = v["sq"] - float(v["sum"].pow(2).sum()) / v["n"]  # Σ‖x − mean‖²
        self.log_dict({f"{stage}/loss": v["loss"] / v["n"],
                       f"{stage}/explained_variance": 1.0 - v["sse"] / max(total, 1e-12),
                       f"{stage}/dead_fraction": 1.0 - v["fired"].float().mean().item()}, prog_bar=stage == "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.sae.parameters(), lr=self.hparams.lr, eps=1e-7,
                                weight_decay=self.hparams.weight_decay)
        if not self.hparams.milestones:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(self.hparams.milestones), gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ----------------------------------------------------------------------------------- checkpoints
    def checkpoint_info(self) -> dict:
        """The checkpoint's ``"stori"`` entry: what the SAE reads and its shape."""
        h = self.hparams
        return {"format": SAE_CHECKPOINT_FORMAT, "stori_pl_version": __version__, "model": type(self).__name__,
                "clip_model": h.clip_model, "pretrained": h.pretrained, "block": self.block,
                "input_dim": self.sae.input_dim, "n_latents": self.sae.n_latents, "k": self.sae.k}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["stori"] = self.checkpoint_info()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get("stori") or {}
        if info.get("model") != type(self).__name__:
            raise ValueError(f"checkpoint holds a {info.get('model') or 'non-stori-pl'} model, not a sparse autoencoder")
        if info.get("format") != SAE_CHECKPOINT_FORMAT:
            raise ValueError(f"SAE checkpoint format {info.get('format')} is not readable by this stori-pl "
                             f"(format {SAE_CHECKPOINT_FORMAT})")
        self.check_compatible(info["clip_model"], info["block"])
