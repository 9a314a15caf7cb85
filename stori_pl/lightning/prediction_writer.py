"""``PredictionCSVWriter``: ``stori predict`` results as a CSV file (top-k classes per image)."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from stori_pl.utils import atomic_write


class PredictionCSVWriter(BasePredictionWriter):
    """Write ``stori predict`` results as CSV: image (path or index), true label if known, top-k classes.

    Args:
        output: CSV file; None → ``predictions.csv`` in the run's log folder.
        top_k: Classes per row (most probable first), each with its probability.
    """

    def __init__(self, output: str | None = None, top_k: int = 5):
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.output, self.top_k = output, top_k
        self._rows: list[list] = []
        self.written: Path | None = None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        probs = prediction["probs"].float().cpu()  # [B, C]
        k = min(self.top_k, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=-1)  # [B, k]
        names = pl_module.classnames
        paths = getattr(trainer.datamodule, "predict_paths", None)
        start = len(self._rows)
        index = prediction.get("index")
        for j in range(probs.shape[0]):
            i = int(index[j]) if index is not None else start + j
            row = [str(paths[i]) if paths else i]
            if "label" in prediction:
                row.append(names[int(prediction["label"][j])])
            for c, p in zip(top_i[j].tolist(), top_p[j].tolist()):
                row += [names[c], f"{p:.6f}"]
            self._rows.append(row)
        self._has_label = "label" in prediction

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._rows:
            return
        k = (len(self._rows[0]) - 1 - int(self._has_label)) // 2
        header = ["image"] + (["label"] if self._has_label else [])
        for r in range(1, k + 1):
            header += [f"top{r}", f"prob{r}"]
        path = Path(self.output) if self.output else Path(trainer.log_dir or ".") / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        with atomic_write(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(self._rows)
        self.written = path
        print(f"stori: wrote {len(self._rows)} predictions to {path}")
