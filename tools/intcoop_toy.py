"""IntCoOp on the toy world: attribute accuracy, base-to-novel (IntCoOp vs CoOp vs zero-shot), label noise.

Run: ``python tools/intcoop_toy.py --seeds 1 2 3`` (docs/intcoop.md has the figures). The tests
(tests/test_intcoop_toy.py) call the same functions with a smaller budget.

Setup: the 12 ToyShapes classes (pattern, color, shape) through the shipped ``stori-toy`` CLIP; images drawn from
the toy world with a seed (``shots`` per class for training, ``n_test`` per class for testing); each image's
attribute label is its exact size or background word (not part of the class names). Base = the first half of the
labels, new = the rest (CoCoOp's split). Models train on cached image features with a plain SGD loop (the
LightningModule's own ``losses``; CoOp's optimizer, a cosine schedule), full batch per step.
"""

from __future__ import annotations

import argparse
import random
import statistics
import warnings

import torch
import torch.nn.functional as F

from stori_pl.data.containers import PromptSet
from stori_pl.lightning.results import harmonic_mean
from stori_pl.toy.data import TOY_CLASSES, classname
from stori_pl.toy.world import render, sample_object

WORDS = {"size": ["large", "small"], "background": ["black", "gray", "white"]}


def toy_split(seed: int, shots: int = 16, n_test: int = 20, attribute: str = "size", noise: float = 0.0) -> dict:
    """Image features, class labels and attribute-word indices of a toy few-shot split.

    ``noise`` adds Gaussian noise of that norm to every (unit) image feature before renormalizing: a weaker
    encoder, so that the methods leave the toy world's ceiling (seeded by ``seed``).

    Returns:
        ``{"train"|"test": (features [N, D], labels [N], words [N])}`` and ``"words"`` (the vocabulary).
    """
    from stori_pl import load_clip

    model, preprocess, _ = load_clip("stori-toy", "builtin")
    rng = random.Random(seed)
    out: dict = {"words": WORDS[attribute]}
    for part, n in (("train", shots), ("test", n_test)):
        images, labels, words = [], [], []
        for label, (pattern, color, shape) in enumerate(TOY_CLASSES):
            for _ in range(n):
                obj = sample_object(rng, heldout=None, pattern=pattern, color=color, shape=shape)
                images.append(preprocess(_pil(render(obj, rng))))
                labels.append(label)
                words.append(WORDS[attribute].index(getattr(obj, attribute)))
        with torch.no_grad():
            feats = F.normalize(model.encode_image(torch.stack(images)).float(), dim=-1)
            g = torch.Generator().manual_seed(seed + (part == "test"))
            feats = F.normalize(feats + noise * F.normalize(torch.randn(feats.shape, generator=g), dim=-1), dim=-1)
        out[part] = (feats, torch.tensor(labels), torch.tensor(words))
    return out


def _pil(array):
    from PIL import Image

    return Image.fromarray(array)


def subsample(part: tuple, half: str) -> tuple:
    """Keep the base (first half) or new (second half) classes, labels renumbered from 0."""
    feats, labels, words = part
    n = len(TOY_CLASSES) // 2
    keep = labels < n if half == "base" else labels >= n
    return feats[keep], labels[keep] - (0 if half == "base" else n), words[keep]


def prompts(half: str) -> dict:
    """PromptSet dict of the base or new classes."""
    n = len(TOY_CLASSES) // 2
    names = [classname(*c) for c in (TOY_CLASSES[:n] if half == "base" else TOY_CLASSES[n:])]
    return PromptSet(names, [[f"a photo of a {c}."] for c in names], [[] for _ in names]).to_dict()


def train(model, part: tuple, epochs: int, lr: float = 0.002, batch: int = 32, seed: int = 0):
    """SGD (momentum 0.9, weight decay 5e-4) with a cosine schedule over ``epochs``; returns the model."""
    feats, labels, words = part
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(labels), generator=g).split(batch):
            b = {"features": feats[index], "label": labels[index], "attribute": words[index]}
            loss = model.losses(b)[2] if hasattr(model, "losses") else F.cross_entropy(model(b["features"]), b["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


def accuracy(model, part: tuple) -> float:
    """Top-1 accuracy (%) of ``model`` on ``(features, labels, _)``."""
    with torch.no_grad():
        return 100.0 * float((model(part[0]).argmax(-1) == part[1]).float().mean())


def attribute_accuracy(model, part: tuple) -> float:
    """Nearest-word accuracy (%) of ``A(f(I))`` over the label vocabulary (cosine in token-embedding space)."""
    from stori_pl.models.intcoop_parts import nearest_words

    with torch.no_grad():
        _, index = nearest_words(model.extractor(part[0]), model.word_table)
    return 100.0 * float((index[:, 0].cpu() == part[2]).float().mean())


def run_seed(seed: int, epochs: int = 50, shots: int = 16, n_test: int = 20, attribute: str = "size",
             noise: float = 0.0, **intcoop_args) -> dict[str, float]:
    """One seed of every figure: zero-shot / CoOp / IntCoOp (oracle and shuffled labels) base, new, HM, and
    IntCoOp's attribute accuracy on base and new test images."""
    from stori_pl.models import CoOp, IntCoOp, ZeroShotCLIP

    data = toy_split(seed, shots, n_test, attribute, noise)
    base_train, base_test, new_test = (subsample(data[p], h) for p, h in
                                       (("train", "base"), ("test", "base"), ("test", "new")))
    clip = {"clip_model": "stori-toy", "pretrained": "builtin"}
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {"zero-shot": None}
        torch.manual_seed(seed)
        models["CoOp"] = train(CoOp(**clip, prompts=prompts("base")), base_train, epochs, seed=seed)  # its recipe
        torch.manual_seed(seed)
        models["CoOp (a photo of a)"] = train(CoOp(**clip, ctx_init="a photo of a", prompts=prompts("base")),
                                              base_train, epochs, seed=seed)
        for name, shuffle in (("IntCoOp", False), ("IntCoOp (shuffled labels)", True)):
            words = base_train[2][torch.randperm(len(base_train[2]), generator=torch.Generator().manual_seed(seed))] \
                if shuffle else base_train[2]
            torch.manual_seed(seed)
            model = IntCoOp(**clip, attribute_words=data["words"], prompts=prompts("base"), **intcoop_args)
            models[name] = train(model, (base_train[0], base_train[1], words), epochs, seed=seed)
        for name, model in models.items():
            for half, part in (("base", base_test), ("new", new_test)):
                if model is None:
                    model = ZeroShotCLIP(**clip, prompts=prompts(half))
                elif half == "new":
                    model.build(prompts("new"))  # same trained parts, new class names
                out[f"{name} {half}"] = accuracy(model, part)
                if name.startswith("IntCoOp"):
                    out[f"{name} attribute {half}"] = attribute_accuracy(model, part)
            out[f"{name} HM"] = harmonic_mean(out[f"{name} base"], out[f"{name} new"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--n_test", type=int, default=20)
    p.add_argument("--attribute", choices=sorted(WORDS), default="size")
    p.add_argument("--noise", type=float, default=0.0, help="feature noise norm (0: the plain toy world)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [run_seed(s, args.epochs, args.shots, args.n_test, args.attribute, args.noise) for s in args.seeds]
    for key in runs[0]:
        values = [r[key] for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{key:40s} {statistics.mean(values):6.1f} ± {sd:4.1f}   " + " ".join(f"{v:5.1f}" for v in values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
