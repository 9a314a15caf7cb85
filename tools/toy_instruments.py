"""The toy world's instrument figures for one set of tiny-CLIP weights, over several seeds (docs/toy_world.md).

    python tools/toy_instruments.py [--weights FILE] [--seeds 0 1 2] [--out FILE.json]

Per seed (a fresh render of each benchmark and retrieval pool; the CLIP is fixed):
- ``word_sensitivity``: mean 1 - cos between a caption's embedding and the same caption with one claimed word
  masked (weight 0) from block 7 on;
- ``zero_shot`` / ``linear_probe``: ToyShapes (48 classes) test accuracy of the template prompts and of a 16-shot
  logistic regression on the image features (C searched on the 4-shot val set, as CoOp's lpclip);
- ``b2n_new_zero_shot``: zero-shot among the new half of the classes (CoCoOp's base-to-novel split), ToyShapes and
  ToyKinds;
- ``kinds``: 8-way ToyKinds test accuracy with the noun alone, with each image's true state, with the wrong state;
- ``binding``: scenes with a distractor of another color; share where the image is closer to "a {color} {shape}
  with a small {d_color} {d_shape}." than to the caption with the two colors swapped (chance 0.5: a bag of words
  cannot tell them apart);
- ``emphasis``: the retrieval protocol of docs/retrieval.md at start block 7 (ΔAP, ΔP@80 at w 1.5 / 0.5, share of
  cases in the expected direction).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stori_pl import load_clip  # noqa: E402
from stori_pl.toy import data as toy_data  # noqa: E402
from stori_pl.toy import pretrain  # noqa: E402
from stori_pl.toy import world  # noqa: E402


def benchmark_features(model, spec, seed: int, n_train: int = 16, n_val: int = 4, n_test: int = 100):
    """``{part: (features [N, D] normalized, labels [N], scenes)}`` of a fresh render of ``spec``."""
    parts: dict[str, tuple[list, list, list]] = {p: ([], [], []) for p in ("train", "val", "test")}
    for part, label, _, _, obj, image in toy_data.toy_shapes_items(seed, n_train, n_val, n_test, spec):
        parts[part][0].append(image)
        parts[part][1].append(label)
        parts[part][2].append(obj)
    out = {}
    with torch.no_grad():
        for part, (images, labels, objs) in parts.items():
            x = pretrain.to_tensor(np.stack(images))
            feats = torch.cat([model.encode_image(x[i : i + 256]) for i in range(0, len(x), 256)])
            out[part] = (F.normalize(feats, dim=-1), torch.tensor(labels), objs)
    return out


def class_embeddings(model, tokenizer, prompts: list[list[str]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([F.normalize(F.normalize(model.encode_text(tokenizer(p)), dim=-1).mean(0), dim=-1)
                            for p in prompts])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def linear_probe(feats: dict, n_classes: int) -> float:
    """Multinomial logistic regression (L-BFGS) with C searched on val over 10^-2..10^4; test accuracy."""
    (xtr, ytr, _), (xva, yva, _), (xte, yte, _) = feats["train"], feats["val"], feats["test"]

    def fit(c: float) -> torch.nn.Linear:
        head = torch.nn.Linear(xtr.shape[1], n_classes)
        opt = torch.optim.LBFGS(head.parameters(), max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(head(xtr), ytr) + head.weight.pow(2).sum() / (2 * c * len(xtr))
            loss.backward()
            return loss

        opt.step(closure)
        return head

    best = max((accuracy(fit(c)(xva).detach(), yva), c) for c in (1e-2, 1e-1, 1, 10, 100, 1e3, 1e4))
    return accuracy(fit(best[1])(xte).detach(), yte)


def new_half_zero_shot(feats: dict, emb: torch.Tensor) -> float:
    """Zero-shot among the second half of the classes (CoCoOp's new classes), on their test images."""
    x, y, _ = feats["test"]
    half = len(emb) // 2
    keep = y >= len(emb) - (len(emb) - half)
    return accuracy(x[keep] @ emb[half:].T, y[keep] - half)


def kinds_figures(model, tokenizer, feats: dict) -> dict:
    x, y, objs = feats["test"]
    nouns = list(world.KINDS)
    name = class_embeddings(model, tokenizer, [[f"a photo of a {n}."] for n in nouns])
    by_state = {s: class_embeddings(model, tokenizer, [[f"a photo of a {s} {n}."] for n in nouns]) for s in world.STATES}
    true = torch.stack([f @ by_state[o.state].T for f, o in zip(x, objs)])
    wrong = torch.stack([f @ by_state["dry" if o.state == "wet" else "wet"].T for f, o in zip(x, objs)])
    return {"name": accuracy(x @ name.T, y), "true_state": accuracy(true, y), "wrong_state": accuracy(wrong, y)}


def binding(model, tokenizer, seed: int, n: int = 400) -> float:
    rng = random.Random(seed)
    objs = []
    while len(objs) < n:
        o = world.sample_object(rng, heldout=None, distractor=1.0)
        if o.d_color != o.color:
            objs.append(o)
    x = pretrain.to_tensor(np.stack([world.render(o, rng) for o in objs]))
    right = [f"a {o.color} {o.shape} with a small {o.d_color} {o.d_shape}." for o in objs]
    swapped = [f"a {o.d_color} {o.shape} with a small {o.color} {o.d_shape}." for o in objs]
    with torch.no_grad():
        img = F.normalize(model.encode_image(x), dim=-1)
        r = F.normalize(model.encode_text(tokenizer(right)), dim=-1)
        w = F.normalize(model.encode_text(tokenizer(swapped)), dim=-1)
    return float(((img * r).sum(-1) > (img * w).sum(-1)).float().mean())


def emphasis(weights: str, seed: int, root: Path, emphasis_weights: tuple[float, ...] = (1.5, 0.5),
             top_k: int = 80) -> dict:
    """Table 3's protocol at start block 7 on a fresh toy attribute pool (``seed``): per weight ``w`` of the target
    attribute, the mean change of AP and P@``top_k`` (points of [0, 1]) from the plain prompt over the 30 task ×
    attribute cases (``dAP_w{w}``, ``dP@{k}_w{w}``) and the share of cases that move in the expected direction
    (``right_direction_w{w}``: up for w > 1, down for w < 1)."""
    from stori_pl.retrieval.runner import run_preference_retrieval

    toy_data.write_toy_attributes(root, seed=seed)
    ds = toy_data.load_toy_attributes(root)
    report = run_preference_retrieval(ds, toy_data.toy_retrieval_tasks(), "stori-toy", weights, start_block=7,
                                      per_category=toy_data.RETRIEVAL_PER_CATEGORY, seed=seed,
                                      weights=tuple(emphasis_weights), top_k=(top_k,), cache_dir=root / "cache")
    rows = report["rows"]
    out = {}
    for metric in ("AP", f"P@{top_k}"):
        plain = {(r["task"], r["attribute"]): r[metric] for r in rows if r["weight"] == 1.0}
        for w in emphasis_weights:
            d = torch.tensor([r[metric] - plain[(r["task"], r["attribute"])] for r in rows if r["weight"] == w])
            out[f"d{metric}_w{w}"] = float(d.mean())
            if metric == "AP":
                out[f"right_direction_w{w}"] = float(((d > 0) if w > 1 else (d < 0)).float().mean())
    return out


def measure(weights: str, seed: int) -> dict:
    model, _, tokenizer = load_clip("stori-toy", pretrained=weights)
    shapes = benchmark_features(model, toy_data.SHAPES_SPEC, seed)
    kinds = benchmark_features(model, toy_data.KINDS_SPEC, seed)
    shape_emb = class_embeddings(model, tokenizer, [[f"a photo of a {c}."] for c in toy_data.SHAPES_SPEC.classes])
    kind_emb = class_embeddings(model, tokenizer, [[f"a photo of a {c}."] for c in toy_data.KINDS_SPEC.classes])
    with tempfile.TemporaryDirectory() as tmp:
        emph = emphasis(weights, seed, Path(tmp))
    return {
        "seed": seed,
        "word_sensitivity": pretrain.word_sensitivity(model, tokenizer, start_block=7, n=300, seed=seed),
        "zero_shot": accuracy(shapes["test"][0] @ shape_emb.T, shapes["test"][1]),
        "linear_probe": linear_probe(shapes, len(shape_emb)),
        "b2n_new_zero_shot": {"toy_shapes": new_half_zero_shot(shapes, shape_emb),
                              "toy_kinds": new_half_zero_shot(kinds, kind_emb)},
        "kinds": kinds_figures(model, tokenizer, kinds),
        "binding": binding(model, tokenizer, seed),
        "emphasis": emph,
    }


def summarize(runs: list[dict]) -> dict:
    """Mean, sd, min, max over seeds of every number in the runs."""
    def walk(items: list, prefix: str = "") -> dict:
        out = {}
        for key, value in items[0].items():
            if key == "seed":
                continue
            if isinstance(value, dict):
                out.update(walk([r[key] for r in items], f"{prefix}{key}."))
            else:
                xs = [r[key] for r in items]
                out[prefix + key] = {"mean": round(statistics.fmean(xs), 4),
                                     "sd": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0,
                                     "min": round(min(xs), 4), "max": round(max(xs), 4)}
        return out
    return walk(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=str(REPO / "stori_pl" / "assets" / "stori-toy.safetensors"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    runs = []
    for s in args.seeds:
        runs.append(measure(args.weights, s))
        print(json.dumps(runs[-1]), flush=True)
    result = {"weights": args.weights, "runs": runs, "summary": summarize(runs)}
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
