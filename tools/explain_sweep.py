"""Readability sweep behind docs/explanations.md: train the demo (configs/demo.yaml as committed) with model
overrides over few-shot seeds and measure test accuracy + explanation metrics of the final weights (what last.ckpt
holds), with their uniform-weights baselines.

Each run is ``stori fit --config configs/demo.yaml --data.init_args.seed S --seed_everything S
--model.init_args.<k> <v> ...`` followed by ``stori explain-eval runs/.../last.ckpt``, done in one process (same
trainer settings: epochs, Adam, cosine; validation, plots and checkpoints are skipped since they do not change
the final weights), so the image features and the CLIP are loaded once. ``--spurious`` trains on
ToyShapesSpurious instead (its sentences name the class's spurious distractor: ``distractor_share``).

    OMP_NUM_THREADS=1 python tools/explain_sweep.py --out sweep.jsonl --seeds 1 2 3 4 5 --setting demo:
    OMP_NUM_THREADS=1 python tools/explain_sweep.py --out sweep.jsonl --seeds 1 2 3 --setting l2=0.3:log_weight_l2=0.3
    OMP_NUM_THREADS=1 python tools/explain_sweep.py --out spurious.jsonl --seeds 1 2 3 4 5 --setting demo: --spurious
    python tools/explain_sweep.py --out sweep.jsonl --table

A setting is ``NAME:key=value,key=value`` (model init args, and ``max_epochs`` for the trainer; values parsed as
YAML; each run starts from the demo config as committed, ``NAME:`` alone is the demo itself). Finished
(setting, seed) pairs already in ``--out`` are skipped, so the sweep can be resumed; ``--table`` prints the
mean ± sd table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# table columns: each metric followed by its uniform-weights baseline where it has one
METRICS = ("test_acc", "discriminative_share", "precision_at_k", "precision_at_k_uniform", "sign_agreement",
           "sign_agreement_uniform", "sign_agreement_nuisance", "sign_agreement_nuisance_uniform", "distractor_share",
           "sink_share", "sink_share_uniform", "sign_agreement_absolute", "top_word_defining")


def parse_setting(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    pairs = [kv.split("=", 1) for kv in rest.split(",") if kv]
    return name, {k: yaml.safe_load(v) for k, v in pairs}


def run_one(overrides: dict, seed: int, root: str, epochs: int | None, spurious: bool = False) -> dict:
    import lightning as L
    import torch

    from stori_pl.interpret.metrics import explanation_metrics
    from stori_pl.toy import TOY_GROUND_TRUTH
    from stori_pl.models import StoriClassifier
    from stori_pl.toy.data import ToyShapes, ToyShapesSpurious

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    overrides = dict(overrides)
    epochs = overrides.pop("max_epochs", epochs)  # a trainer setting (--trainer.max_epochs N)
    model_args = {**cfg["model"]["init_args"], **overrides}
    data_args = {**cfg["data"]["init_args"], "root": root, "seed": seed}
    L.seed_everything(seed, verbose=False)  # the data seed and seed_everything move together
    dm = (ToyShapesSpurious if spurious else ToyShapes)(**data_args)
    model = StoriClassifier(**model_args)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=epochs or cfg["trainer"]["max_epochs"],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    model.eval()
    dm.setup("test")
    batches = list(dm.test_dataloader())
    feats, labels = torch.cat([b["features"] for b in batches]), torch.cat([b["label"] for b in batches])
    acc = float((model.classify_features(feats).argmax(-1).cpu() == labels).float().mean())
    result = explanation_metrics(model.word_weights(), TOY_GROUND_TRUTH, 3, model, feats, labels)
    return {"test_acc": acc, **result.summary}


def table(rows: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["setting"] + (" (spurious)" if r.get("spurious") else ""), []).append(r)
    cols = [m for m in METRICS if any(m in r for r in rows)]
    head = [m.replace("_at_k", "_at_3") for m in cols]
    lines = ["| setting | overrides | seeds | " + " | ".join(head) + " |", "|---" * (len(cols) + 3) + "|"]
    for name, rs in by.items():
        cells = []
        for m in cols:
            vals = [r[m] * (100 if m == "test_acc" else 1) for r in rs if m in r]
            if not vals:
                cells.append("—")
                continue
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.{1 if m == 'test_acc' else 2}f} ± {sd:.{1 if m == 'test_acc' else 2}f}")
        ov = ", ".join(f"{k}={v}" for k, v in rs[0]["overrides"].items()) or "(configs/demo.yaml)"
        ov += " (ToyShapesSpurious)" if rs[0].get("spurious") else ""
        lines.append(f"| {name} | {ov} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON-lines results file (appended; resumable)")
    p.add_argument("--setting", action="append", default=[], help="NAME:key=value,... (model init args)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="few-shot seeds (data.init_args.seed)")
    p.add_argument("--root", default="data", help="data root (toy_shapes/ generated there when absent)")
    p.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--spurious", action="store_true", help="train on ToyShapesSpurious (distractor_share)")
    p.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.is_file() else []
    if args.table:
        print(table(done))
        return 0
    for text in args.setting:
        name, overrides = parse_setting(text)
        for seed in args.seeds:
            if any(r["setting"] == name and r["seed"] == seed and r.get("spurious", False) == args.spurious for r in done):
                continue
            t0 = time.time()
            row = {"setting": name, "overrides": overrides, "seed": seed, "epochs": args.epochs, "spurious": args.spurious,
                   **run_one(overrides, seed, args.root, args.epochs, args.spurious)}
            row["seconds"] = round(time.time() - t0, 1)
            done.append(row)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
