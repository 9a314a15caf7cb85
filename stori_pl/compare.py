"""``ZeroShotComparison``: report the zero-shot accuracy of a run's own prompts next to its trained accuracy.

SToRI starts from all weights 1 (log-weights 0), which *is* zero-shot classification with the same prompts
(base template + CuPL sentences). The callback evaluates that classifier on the test split before training
and prints ``zero-shot → trained`` after ``stori test`` / fit's automatic test. Used by ``configs/demo.yaml``.
"""

from __future__ import annotations

import torch
from lightning import pytorch as pl


class ZeroShotComparison(pl.Callback):
    """Log ``zero_shot/test_acc`` at fit start (weights reset to 1) and print it against ``test/acc``.

    Args:
        split: Datamodule split to score zero-shot (``"test"`` or ``"val"``).
    """

    def __init__(self, split: str = "test") -> None:
        if split not in ("test", "val"):
            raise ValueError(f"split must be 'test' or 'val', got {split!r}")
        self.split = split
        self.zero_shot_acc: float | None = None

    @torch.no_grad()
    def zero_shot_accuracy(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        """Accuracy on ``split`` with every trained log-weight at 0 (None for models without log-weights)."""
        log_w = getattr(pl_module, "log_weights", None)
        dm = trainer.datamodule
        if not isinstance(log_w, torch.Tensor) or dm is None:
            return None
        loader = dm.test_dataloader() if self.split == "test" else dm.val_dataloader()
        saved = log_w.detach().clone()
        log_w.data.zero_()
        try:
            class_emb = pl_module.class_embeddings().detach()  # [C, D]
            hits = total = 0
            for batch in loader:
                logits = pl_module(batch["features"].to(pl_module.device), class_emb)  # [B, C]
                hits += int((logits.argmax(-1).cpu() == batch["label"]).sum())
                total += len(batch["label"])
        finally:
            log_w.data.copy_(saved)
        return hits / max(total, 1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.zero_shot_acc = self.zero_shot_accuracy(trainer, pl_module)
        if self.zero_shot_acc is not None:
            for logger in trainer.loggers:
                logger.log_metrics({f"zero_shot/{self.split}_acc": self.zero_shot_acc}, step=0)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        acc = trainer.callback_metrics.get("test/acc")
        if self.zero_shot_acc is None:
            self.zero_shot_acc = self.zero_shot_accuracy(trainer, pl_module)
        if acc is None or self.zero_shot_acc is None or not trainer.is_global_zero:
            return
        name = getattr(pl_module, "method_name", type(pl_module).__name__)
        acc = float(acc)
        print(f"\n{self.split} accuracy — zero-shot (same prompts, all weights 1): {100 * self.zero_shot_acc:.1f}%  →  "
              f"{name}: {100 * acc:.1f}%  ({100 * (acc - self.zero_shot_acc):+.1f} points)\n", flush=True)
