"""Lightning callbacks: per-epoch word-weight plots in TensorBoard, a JSON export of all weights, and the
zero-shot comparison of a run's own prompts (``ZeroShotComparison``).

JSON format of ``<run_dir>/weights/epoch_XXX.json``: ``{class: {prompt text: [[word, weight], ...]}}``,
weights summing to 1 within each prompt (:func:`weights_to_json` / :func:`weights_from_json`).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch

from stori_pl.interpret import viz
from stori_pl.interpret.metrics import WordWeights, explanation_metrics, ground_truth_for
from stori_pl.utils import write_json

log = logging.getLogger(__name__)



class WeightPlotCallback(L.Callback):
    """Log SToRI's word weights at the end of every validation epoch.

    For each selected class, an image of its prompts with every word shaded red by its weight
    (``word_weights/<class>``; more pages as ``word_weights/<class>/p2`` ...); a histogram of all trainable
    log-weights (``log_weights``); a markdown table of the most emphasized / de-emphasized words per
    selected class (``top_words``; function words and punctuation left out or marked, see ``function_words``).
    All of that goes to every TensorBoard logger of the trainer. In toy-world runs (every class a
    (pattern, color, shape) triple) the explanation metrics of :mod:`stori_pl.interpret.metrics` go to
    every logger at *every* validation epoch as ``explain/<metric>``, each with its ``explain/<metric>_uniform``
    baseline (sign agreements on the validation images; ``precision_at_k`` keeps its generic name there). Whatever
    the loggers, ``<run_dir>/weights/epoch_XXX.json`` (class → prompt → ``[[word, weight], ...]``, all
    classes) and ``<run_dir>/weights/latest.html`` are written. Models without ``word_weights()``
    (baselines) are skipped.

    Args:
        classes: Class names to plot. None → the ``num_fixed`` first classes (the same every epoch, for
            comparison) plus the ``num_moved`` classes whose weights moved most since the fit started.
        num_moved: See ``classes``.
        num_fixed: See ``classes``.
        top_k: Words per column of the markdown table.
        every_n_epochs: Log every n-th validation epoch (the last epoch of a fit is always logged).
        max_pages: Image pages per class (a page holds about 60 wrapped lines).
        write_json: Write ``weights/epoch_XXX.json``.
        write_html: Write ``weights/latest.html`` (all classes, searchable).
        function_words: In the ``top_words`` table, ``"exclude"`` function words and punctuation or ``"mark"`` them.
        explanation_metrics: Log the toy-world explanation metrics (ignored for other benchmarks).
    """

    def __init__(
        self,
        classes: list[str] | None = None,
        num_moved: int = 4,
        num_fixed: int = 2,
        top_k: int = 5,
        every_n_epochs: int = 1,
        max_pages: int = 2,
        write_json: bool = True,
        write_html: bool = True,
        function_words: str = "exclude",
        explanation_metrics: bool = True,
    ) -> None:
        super().__init__()
        if function_words not in ("exclude", "mark"):
            raise ValueError(f"function_words must be 'exclude' or 'mark', got {function_words!r}")
        self.function_words, self.explanation_metrics = function_words, explanation_metrics
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.classes = list(classes) if classes else None
        self.num_moved, self.num_fixed = num_moved, num_fixed
        self.top_k, self.every_n_epochs, self.max_pages = top_k, every_n_epochs, max_pages
        self.write_json, self.write_html = write_json, write_html
        self._initial: dict[str, list[list[float]]] | None = None
        self.last_written: Path | None = None

    # ------------------------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "word_weights"):
            return
        try:
            weights = pl_module.word_weights()
        except Exception as err:  # the model may build its prompts later; then movement is vs. uniform
            log.debug("WeightPlotCallback: no initial word weights (%s)", err)
            return
        self._initial = _values(weights)
        if trainer.is_global_zero:
            self.select_classes(weights)  # unknown configured classes fail now, not after the first epoch

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not hasattr(pl_module, "word_weights"):
            return
        epoch = trainer.current_epoch
        if self.explanation_metrics:
            self.log_explanation_metrics(trainer, pl_module)
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        self.log_weights(trainer, pl_module, epoch)

    # ---------------------------------------------------------------------------------- logging
    def log_weights(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        """Write the JSON/HTML files and log images, histogram and table (also usable outside a fit)."""
        weights = pl_module.word_weights()
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if self.write_json:
            self.last_written = run_dir / "weights" / f"epoch_{epoch:03d}.json"
            export_weights_json(self.last_written, weights)
        if self.write_html:
            viz.write_html(run_dir / "weights" / "latest.html", weights, title=f"SToRI word weights — epoch {epoch}")
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        selected = self.select_classes(weights)
        step = trainer.global_step
        hist = trainable_log_weights(pl_module, weights)
        table = viz.markdown_top_words({c: weights[c] for c in selected}, self.top_k, function_words=self.function_words)
        images = {}
        for name in selected:
            figs = viz.plot_word_weights(name, weights[name], subtitle=f"epoch {epoch}")[: self.max_pages]
            for n, fig in enumerate(figs):
                images[f"word_weights/{name}" + (f"/p{n + 1}" if n else "")] = viz.figure_to_array(fig)
        for writer in writers:
            for tag, img in images.items():
                writer.add_image(tag, img, step, dataformats="HWC")
            if hist.numel():
                writer.add_histogram("log_weights", hist, step)
            legend = viz.top_words_legend(self.function_words)
            writer.add_text("top_words", f"epoch {epoch}\n\n{table}\n\n{legend}", step)
            writer.flush()

    def log_explanation_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Log ``explain/<metric>`` (toy-world models only) to every logger; returns what was logged."""
        truth = ground_truth_for(list(getattr(pl_module, "classnames", []) or []))
        if truth is None:
            return {}
        features = labels = None
        dm = getattr(trainer, "datamodule", None)
        with torch.inference_mode(False), torch.enable_grad():  # attributions need autograd inside validation
            if dm is not None and hasattr(dm, "val_dataloader"):
                batches = list(dm.val_dataloader())
                features = torch.cat([b["features"].clone() for b in batches])  # [N, D]
                labels = torch.cat([b["label"].clone() for b in batches])  # [N]
            result = explanation_metrics(pl_module.word_weights(), truth, 3, pl_module, features, labels)
        metrics = {f"explain/{k}": v for k, v in result.summary.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return metrics

    def select_classes(self, weights: WordWeights) -> list[str]:
        """The configured classes, or the first ``num_fixed`` plus the ``num_moved`` that moved most."""
        names = list(weights)
        if self.classes:
            missing = [c for c in self.classes if c not in weights]
            if missing:
                hints = {c: difflib.get_close_matches(c, names, n=3) for c in missing}
                raise ValueError(
                    f"WeightPlotCallback.classes: unknown class(es) {missing}; close matches: {hints}. "
                    f"The model has {len(names)} classes, e.g. {names[:5]}"
                )
            return list(self.classes)
        fixed = names[: self.num_fixed]
        moved = movement(weights, self._initial)
        rest = sorted((c for c in names if c not in fixed), key=lambda c: -moved[c])
        return fixed + rest[: self.num_moved]


def movement(weights: WordWeights, initial: Mapping[str, list[list[float]]] | None = None) -> dict[str, float]:
    """Per class: mean over prompts of the L1 distance between current and initial normalized weights.

    Without ``initial`` (or where the prompts differ) the reference is the uniform weighting.
    """
    out = {}
    for name, prompts in weights.items():
        ref = (initial or {}).get(name)
        dists = []
        for i, p in enumerate(prompts):
            cur = [v for _, v in viz.normalize_prompt(p)]
            base = ref[i] if ref is not None and i < len(ref) and len(ref[i]) == len(cur) else [1 / max(len(cur), 1)] * len(cur)
            dists.append(sum(abs(a - b) for a, b in zip(cur, base)))
        out[name] = sum(dists) / len(dists) if dists else 0.0
    return out


def _values(weights: WordWeights) -> dict[str, list[list[float]]]:
    return {c: [[v for _, v in viz.normalize_prompt(p)] for p in prompts] for c, prompts in weights.items()}


def tensorboard_writers(trainer: L.Trainer) -> list:
    """``SummaryWriter`` of every TensorBoard logger attached to ``trainer``."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def trainable_log_weights(pl_module: L.LightningModule, weights: WordWeights | None = None) -> torch.Tensor:
    """1-D tensor of all trainable log-weights (for the histogram).

    Uses ``pl_module.trainable_log_weights()`` when the model has it, else ``log_weights`` with its mask
    ``weight_mask`` (:class:`~stori_pl.models.StoriClassifier`), else the log of each word's weight relative to its prompt's
    uniform weight.
    """
    if hasattr(pl_module, "trainable_log_weights"):
        return pl_module.trainable_log_weights().detach().float().cpu().flatten()
    lw = getattr(pl_module, "log_weights", None)
    if isinstance(lw, torch.nn.ParameterList):
        return torch.cat([p.detach().float().cpu().flatten() for p in lw]) if len(lw) else torch.zeros(0)
    if isinstance(lw, torch.Tensor):
        mask = getattr(pl_module, "weight_mask", None)
        if isinstance(mask, torch.Tensor) and mask.shape == lw.shape[: mask.ndim]:
            return lw.detach()[mask.to(lw.device)].float().cpu()
        return lw.detach().float().cpu().flatten()
    weights = weights if weights is not None else pl_module.word_weights()
    vals = [math.log(max(r, 1e-12)) for ps in weights.values() for p in ps for r in viz.emphasis(p)]
    return torch.tensor(vals, dtype=torch.float32)


def weights_to_json(weights: WordWeights, digits: int = 6) -> dict[str, dict[str, list[list]]]:
    """``class -> prompt text -> [[word, weight], ...]`` (repeated prompt texts get a ``" #2"`` suffix)."""
    out: dict[str, dict[str, list[list]]] = {}
    for name, prompts in weights.items():
        entry: dict[str, list[list]] = {}
        for p in prompts:
            key = base = viz.prompt_text([w for w, _ in p])
            n = 1
            while key in entry:
                n += 1
                key = f"{base} #{n}"
            entry[key] = [[w, round(float(v), digits)] for w, v in p]
        out[name] = entry
    return out


def weights_from_json(obj: Mapping | str | os.PathLike) -> dict[str, list[list[tuple[str, float]]]]:
    """Inverse of :func:`weights_to_json`; accepts the dict or a path to an ``epoch_XXX.json`` file."""
    if not isinstance(obj, Mapping):
        with open(obj, encoding="utf-8") as f:
            obj = json.load(f)
    return {c: [[(str(w), float(v)) for w, v in pairs] for pairs in prompts.values()] for c, prompts in obj.items()}


def export_weights_json(path: str | os.PathLike, weights: WordWeights) -> None:
    """Write :func:`weights_to_json` atomically (via :func:`stori_pl.utils.write_json`)."""
    write_json(path, weights_to_json(weights), indent=1)


# ------------------------------------------------------------------------------ zero-shot comparison
class ZeroShotComparison(L.Callback):
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
    def zero_shot_accuracy(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
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

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.zero_shot_acc = self.zero_shot_accuracy(trainer, pl_module)
        if self.zero_shot_acc is not None:
            for logger in trainer.loggers:
                logger.log_metrics({f"zero_shot/{self.split}_acc": self.zero_shot_acc}, step=0)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        acc = trainer.callback_metrics.get("test/acc")
        if self.zero_shot_acc is None:
            self.zero_shot_acc = self.zero_shot_accuracy(trainer, pl_module)
        if acc is None or self.zero_shot_acc is None or not trainer.is_global_zero:
            return
        name = getattr(pl_module, "method_name", type(pl_module).__name__)
        acc = float(acc)
        ckpt = getattr(trainer, "ckpt_path", None)
        tested = f"checkpoint {Path(ckpt).name}" if ckpt else "the weights at the end of training"
        print(f"\n{self.split} accuracy — zero-shot (same prompts, all weights 1): {100 * self.zero_shot_acc:.1f}%  →  "
              f"{name}: {100 * acc:.1f}%  ({100 * (acc - self.zero_shot_acc):+.1f} points; tested: {tested})\n",
              flush=True)


# ------------------------------------------------------------------------------------- progress lines
class ProgressPrinter(L.Callback):
    """Print one line every few epochs (epoch, train loss, val accuracy, elapsed time) — progress for runs
    whose progress bar is off (the demo), readable in logs too.

    Args:
        every_n_epochs: Print after every n-th training epoch (and after the last one).
    """

    def __init__(self, every_n_epochs: int = 5) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self._start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if not trainer.is_global_zero or (epoch % self.every_n_epochs and not last and not trainer.should_stop):
            return
        print(self.line(trainer, time.monotonic() - (self._start or time.monotonic())), flush=True)

    @staticmethod
    def line(trainer: L.Trainer, elapsed: float) -> str:
        """``epoch 10/60  train loss 0.4213  val acc 85.0%  elapsed 0:12`` (missing metrics left out)."""
        metrics = trainer.callback_metrics
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {trainer.current_epoch + 1}{total}"]
        loss = metrics.get("train/loss_epoch", metrics.get("train/loss"))
        if loss is not None:
            parts.append(f"train loss {float(loss):.4f}")
        if metrics.get("val/acc") is not None:
            parts.append(f"val acc {100 * float(metrics['val/acc']):.1f}%")
        minutes, seconds = divmod(int(elapsed), 60)
        parts.append(f"elapsed {minutes}:{seconds:02d}")
        return "  ".join(parts)
