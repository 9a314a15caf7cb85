"""Optimizers and learning-rate schedules of the official code bases the baselines follow (pure torch).

Dassl (``KaiyangZhou/Dassl.pytorch``, ``dassl/optim/lr_scheduler.py``; used by CoOp and TaskRes) steps its
scheduler once per epoch: ``ConstantWarmupScheduler`` (``WARMUP_RECOUNT=True``) around ``CosineAnnealingLR(T_max =
MAX_EPOCH)``. Epochs ``0 .. W-1`` run at the constant ``WARMUP_CONS_LR``; epoch ``e >= W`` runs at
``lr · (1 + cos(π (e − W) / MAX_EPOCH)) / 2`` — the cosine starts only after the warm-up and does not reach 0.
"""

from __future__ import annotations

import math

import torch


def dassl_lr(epoch: int, base_lr: float, max_epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Learning rate of epoch ``epoch`` (0-indexed) under Dassl's constant warm-up + cosine schedule."""
    if epoch < warmup_epochs:
        return warmup_lr
    return base_lr * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max_epochs)) / 2


def dassl_scheduler(
    optimizer: torch.optim.Optimizer, max_epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch ``LambdaLR`` reproducing :func:`dassl_lr` for every parameter group (step it once per epoch)."""
    base = [group["lr"] for group in optimizer.param_groups]

    def factor(i: int):
        return lambda epoch: dassl_lr(epoch, base[i], max_epochs, warmup_epochs, warmup_lr) / base[i]

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(i) for i in range(len(base))])
