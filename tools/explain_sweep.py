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
    python tools/explain_sweep.py --diagnose runs/demo/version_0/checkpoints/last.ckpt   # the "why" figures

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


def fit_demo(seed: int, root: str, model_overrides: dict | None = None, epochs: int | None = None,
             datamodule: str = "ToyShapes", data_overrides: dict | None = None):
    """Train the demo (``configs/demo.yaml`` as committed, model and data init args overridden) in one process, without
    validation, plots or checkpoints (they do not change the final weights).

    Args:
        seed: Few-shot data seed and ``seed_everything`` (they move together, as in the demo).
        root: Data folder.
        model_overrides: Model init args (and ``max_epochs`` for the trainer).
        epochs: Training epochs (None: the demo's).
        datamodule: Class name in :mod:`stori_pl.toy.data` (ToyShapes, ToyShapesSpurious, ToyKinds).
        data_overrides: Further datamodule init args (e.g. ``cupl``).

    Returns:
        ``(model, datamodule, test features [N, D], test labels [N], test accuracy)`` of the final weights.
    """
    import lightning as L
    import torch

    from stori_pl.models import StoriClassifier
    from stori_pl.toy import data as toy_data

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    overrides = dict(model_overrides or {})
    epochs = overrides.pop("max_epochs", epochs)  # a trainer setting (--trainer.max_epochs N)
    data_args = {**cfg["data"]["init_args"], **(data_overrides or {}), "root": root, "seed": seed}
    L.seed_everything(seed, verbose=False)
    dm = getattr(toy_data, datamodule)(**data_args)
    model = StoriClassifier(**{**cfg["model"]["init_args"], **overrides})
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=epochs or cfg["trainer"]["max_epochs"],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    model.eval()
    dm.setup("test")
    batches = list(dm.test_dataloader())
    feats, labels = torch.cat([b["features"] for b in batches]), torch.cat([b["label"] for b in batches])
    acc = float((model.classify_features(feats).argmax(-1).cpu() == labels).float().mean())
    return model, dm, feats, labels, acc


def run_one(overrides: dict, seed: int, root: str, epochs: int | None, spurious: bool = False) -> dict:
    from stori_pl.interpret.metrics import explanation_metrics
    from stori_pl.toy import TOY_GROUND_TRUTH

    model, _, feats, labels, acc = fit_demo(seed, root, overrides, epochs,
                                            "ToyShapesSpurious" if spurious else "ToyShapes")
    result = explanation_metrics(model.word_weights(), TOY_GROUND_TRUTH, 3, model, feats, labels)
    return {"test_acc": acc, **result.summary}


def diagnose(ckpt: str, root: str) -> dict:
    """The figures behind docs/explanations.md's "why" paragraphs, for one checkpoint: contrastive sign agreement
    per attribute (trained and uniform weights), who takes the top-3 slots, precision@3 with function words left
    out of the ranking, defining words above their sentence's average weight, and the per-class top words."""
    import collections
    from pathlib import Path as P

    import torch

    from stori_pl.cli.explain_eval import toy_features
    from stori_pl.interpret.attribution import contrastive_weights, emphasis_derivatives
    from stori_pl.interpret.metrics import contrast_classes, defining_words, emphasis_groups, prompt_metrics
    from stori_pl.interpret.viz import top_words
    from stori_pl.models import StoriClassifier, load_checkpoint
    from stori_pl.text.function_words import is_function_word
    from stori_pl.toy import TOY_GROUND_TRUTH as truth

    model = load_checkpoint(ckpt, expect=StoriClassifier)
    feats, labels = toy_features(model, P(root), "test")
    groups, dirs = emphasis_groups(model, truth)
    defining_groups = [g for g, a in enumerate(groups) if a not in truth.nuisance_attributes]
    out: dict = {"checkpoint": ckpt}
    for name, log_w in (("trained", None), ("uniform", torch.zeros_like(model.effective_log_weights()))):
        logits, derivs = emphasis_derivatives(model, feats, dirs, log_w)
        preds = logits.argmax(-1)
        counts: dict[str, list[int]] = {}
        for c in range(model.num_classes):
            rows = ((labels == c) & (preds == c)).nonzero().flatten()
            for g in defining_groups:
                w = contrastive_weights(logits[rows], c, contrast_classes(model.classnames, truth, c, groups[g]))
                for h in range(len(groups)):
                    key = groups[g] if h == g else f"{groups[g]}/{groups[h]}"
                    if h != g and h in defining_groups:
                        continue
                    hit = counts.setdefault(key, [0, 0])
                    hit[0] += int(((w * derivs[h, rows]).sum(-1) > 0).sum())
                    hit[1] += len(rows)
        out[f"sign_agreement_by_attribute_{name}"] = {k: round(h / t, 3) for k, (h, t) in counts.items()}
    weights = model.word_weights()
    defining = defining_words(list(weights), truth)
    slots: collections.Counter = collections.Counter()
    above: collections.Counter = collections.Counter()
    tops: collections.Counter = collections.Counter()
    precision_content = []
    for c, prompts in weights.items():
        for p in prompts:
            for i in sorted(range(len(p)), key=lambda i: -p[i][1])[:3]:
                w = p[i][0]
                slots["defining" if w in defining[c] else "function word" if is_function_word(w)
                      else "sink" if truth.is_sink(w) else "other"] += 1
            content = [(w, v) for w, v in p if not is_function_word(w)]
            precision_content.append(prompt_metrics(content, defining[c], truth)["precision_at_k"])
            above[sum(1 for w, v in p if w in defining[c] and v * len(p) > 1)] += 1
        up, _ = top_words({c: prompts}, 1, over="prompts")
        tops[("DEFINING" if up[0][0] in defining[c] else up[0][0]) if up else "-"] += 1
    out.update({"top3_slots": dict(slots), "precision_at_3_function_words_left_out":
                round(sum(precision_content) / len(precision_content), 3),
                "defining_words_above_average_per_sentence": dict(sorted(above.items())),
                "class_top_word": dict(tops.most_common())})
    return out


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
    p.add_argument("--out", type=Path, help="JSON-lines results file (appended; resumable)")
    p.add_argument("--diagnose", metavar="CKPT", help="instead: the 'why' figures of one checkpoint (JSON)")
    p.add_argument("--setting", action="append", default=[], help="NAME:key=value,... (model init args)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="few-shot seeds (data.init_args.seed)")
    p.add_argument("--root", default="data", help="data root (toy_shapes/ generated there when absent)")
    p.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--spurious", action="store_true", help="train on ToyShapesSpurious (distractor_share)")
    p.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.diagnose:
        print(json.dumps(diagnose(args.diagnose, args.root), indent=1))
        return 0
    if args.out is None:
        p.error("--out is required (or --diagnose CKPT)")
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
