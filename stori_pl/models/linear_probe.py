"""Linear probe (Radford et al. 2021; the protocol of CoOp's ``lpclip/linear_probe.py``): L2-regularized
multinomial logistic regression on frozen image features, its strength ``C`` searched on the few-shot val split.

Follows ``KaiyangZhou/CoOp``, ``lpclip/linear_probe.py``: sklearn ``LogisticRegression(solver="lbfgs",
max_iter=1000, penalty="l2", C)`` — i.e. minimize ``Σᵢ CE(W fᵢ + b, yᵢ) + ‖W‖² / (2C)`` (bias not penalized) —
with ``C`` first chosen from ``[1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]`` by val accuracy, then refined by 8
steps of the official log-space bisection around the peak. Here the solver is ``torch.optim.LBFGS`` (no new
dependency) on sklearn's scaled objective ``mean CE + ‖W‖² / (2 C n)`` (sklearn ≥ 1.1, ``LinearModelLoss``),
stopped as scipy's L-BFGS-B is by sklearn: max-norm of the gradient ≤ ``tol`` (sklearn's default 1e-4,
the official setting), relative loss change ≤ 64·eps, 10 correction pairs. The stopping point matters: the
val accuracy of a probe stopped at 1e-4 is not the optimum's, and the C search follows it (issue 23, toy 4-shot:
C = 1e3 at sklearn's tolerance, 1e5 at the optimum); ``tol=1e-10`` solves to the optimum.
Departure: the features are the cache's L2-normalized ones (the official extracts raw ``visual(image)``
outputs), so the searched ``C`` differs in scale, not the protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stori_pl.models.base import ClipClassifier

C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)  # the official initial search list


SKLEARN_TOL = 1e-4  # sklearn LogisticRegression's default tol (the official lpclip script keeps it)
EPS64 = 2.220446049250313e-16  # float64 machine epsilon (sklearn passes ftol = 64 · eps to L-BFGS-B)


def fit_logistic(feats: torch.Tensor, labels: torch.Tensor, n_classes: int, c: float,
                 max_iter: int = 1000, tol: float = SKLEARN_TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimize ``mean CE(feats Wᵀ + b, labels) + ‖W‖² / (2 c n)`` (sklearn's scaled objective; same optimum as
    ``Σ CE + ‖W‖² / (2c)``) with L-BFGS from zero: ``W [C, D]``, ``b [C]`` (float64).

    Args:
        tol: Stop when the gradient's max-norm is ≤ ``tol`` (sklearn's ``tol``, default 1e-4); 1e-10: the optimum.
    """
    x, y = feats.double(), labels.long()
    n = len(y)
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    tight = tol < 1e-8
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=tol,
                            tolerance_change=1e-14 if tight else 64 * EPS64,
                            history_size=20 if tight else 10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + (w * w).sum() / (2 * c * n)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def val_accuracy(w: torch.Tensor, b: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of ``argmax(feats Wᵀ + b)``."""
    return float(((feats.double() @ w.T + b).argmax(-1) == labels).double().mean())


def search_c(accuracy: Callable[[float], float], grid: Sequence[float] = C_GRID, steps: int = 8) -> float:
    """The official search of ``C``: best of ``grid`` by ``accuracy(C)`` (val accuracy of a probe fitted with
    that ``C``), then ``steps`` rounds of bisection in log10 space around the peak; returns the last winner."""
    scores = [accuracy(c) for c in grid]
    peak = grid[max(range(len(grid)), key=lambda i: (scores[i], -i))]  # np.argmax: the first maximum
    left, right, best = 0.1 * peak, 10 * peak, peak
    for _ in range(steps):
        acc_left, acc_right = accuracy(left), accuracy(right)
        if acc_left < acc_right:
            best = right
            left, right = 0.5 * (math.log10(right) + math.log10(left)), math.log10(right)
        else:
            best = left
            left, right = math.log10(left), 0.5 * (math.log10(right) + math.log10(left))
        left, right = 10**left, 10**right
    return best


class LinearProbe(ClipClassifier):
    """Logistic regression on frozen CLIP image features; fitted (and ``C`` searched) at the end of ``stori fit``.

    Args:
        clip_model: open_clip architecture name (of the cached image features).
        pretrained: open_clip tag, local checkpoint file, ``"builtin"`` or None (random init).
        search_steps: Bisection rounds after the grid (official: 8).
        max_iter: L-BFGS iterations per fit (official: 1000).
        tol: L-BFGS gradient tolerance (sklearn's default 1e-4, the official; 1e-10 solves each fit to its optimum).
        prompts: ``PromptSet.to_dict()``; None → from the datamodule (only the class names are used).
    """


    def __init__(
        self,
        clip_model: str = "RN50",
        pretrained: str | None = "openai",
        search_steps: int = 8,
        max_iter: int = 1000,
        tol: float = SKLEARN_TOL,
        prompts: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["prompts"])  # the checkpoint keeps the prompts in its "stori" entry
        self._finish_init(prompts)

    @property
    def method_name(self) -> str:
        return "Linear probe"

    def _build_classifier(self, prompt_set) -> None:
        dim = int(self.clip.visual.output_dim)  # the image feature size
        self.weight = nn.Parameter(torch.zeros(self.num_classes, dim, device=self.device), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(self.num_classes, device=self.device), requires_grad=False)
        self.register_buffer("c", torch.tensor(float("nan"), device=self.device))  # the searched C

    def forward(self, features: torch.Tensor, class_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[N, C] = features Wᵀ + b`` (features as cached: L2-normalized)."""
        return features.to(self.weight) @ self.weight.T + self.bias

    def class_embeddings(self) -> torch.Tensor:
        """The probe's weight rows, normalized ``[C, D]`` (for views that expect class directions)."""
        return F.normalize(self.weight, dim=-1)

    def training_step(self, batch: dict, batch_idx: int):
        return None  # fitted in closed form at the last validation of the fit

    def configure_optimizers(self):
        return None

    def on_validation_epoch_start(self) -> None:
        """At the last epoch of a fit: search C on val, then fit on the training features with it."""
        if not self.at_last_fit_validation():
            return
        dm = self.trainer.datamodule
        train_x, train_y = dm.split_features("train")
        train = (train_x[:, 0] if train_x.ndim == 3 else train_x, train_y)  # eval-transform view, as the official
        val = dm.split_features("val")

        tol = self.hparams.get("tol", 1e-10)  # checkpoints before the option: the optimum

        def accuracy(c: float) -> float:
            return val_accuracy(*fit_logistic(*train, self.num_classes, c, self.hparams.max_iter, tol), *val)

        c = search_c(accuracy, steps=self.hparams.search_steps)
        w, b = fit_logistic(*train, self.num_classes, c, self.hparams.max_iter, tol)
        self.weight.data.copy_(w.to(self.weight))
        self.bias.data.copy_(b.to(self.bias))
        self.c.fill_(c)
        self.print(f"Linear probe: C = {c:.4g} (searched on val)")
