"""IntCoOp on toy world v2's state-dependent classes (ToyKinds): base-to-novel, oracle vs shuffled state labels.

Run: ``python tools/intcoop_toy.py --seeds 1 2 3 4 5`` (docs/intcoop.md has the figures and the exact command);
``--probe`` prints only the state probe (:func:`state_probe`: is wet / dry decodable from the image embedding the
same way for the new nouns as for the base ones?).
The tests (tests/test_intcoop_toy.py) call the same functions with a smaller budget.

Setup: the 8 ToyKinds nouns (:data:`stori_pl.toy.world.KINDS`) through the shipped ``stori-toy`` CLIP. A noun's
look depends on its state (``wet`` / ``dry``): the noun alone is ambiguous, the state resolves it. Scenes are the
benchmark's own (:func:`stori_pl.toy.data.toy_shapes_items` with ToyKinds' spec, seeded by the seed): ``shots`` per
class for training, ``n_test`` per class for testing. Each image's attribute label is its state (the ``toy``
labeller's word for ToyKinds). Base = the first half of the labels (blicket, dax, wug, fep: circles and
squares), new = the rest (toma, zorp, kiki, bouba: triangles and stars), CoCoOp's split. Models train on cached
image features with a plain SGD loop (the LightningModule's own ``losses``; CoOp's optimizer, a cosine schedule).

Rows: zero-shot CLIP with the noun alone; zero-shot with each test image's *true* state in the prompt (a
test-time oracle, the ceiling the attribute slot can reach); zero-shot with both states' prompts, each class
scoring its better one (the state resolved on the text side, no label); CoOp (its default: 16 random context
vectors); CoOp from "a photo of a" (IntCoOp's context init); IntCoOp trained with the true states (oracle
labels); IntCoOp trained with the states shuffled across the training images (the label-noise ablation); and
the oracle-trained IntCoOp with its attribute slot filled by each test image's true (or wrong) state word
instead of ``A(f(I))`` (does the word reach the prompt, and what would a perfect extractor give). Paired
differences (per seed, same images) come with a t-based 95 % CI.
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings

import torch
import torch.nn.functional as F

from stori_pl.data.containers import PromptSet
from stori_pl.lightning.results import harmonic_mean
from stori_pl.toy.data import KINDS_SPEC, toy_shapes_items
from stori_pl.toy.world import STATES

CLASSES = KINDS_SPEC.classes
N_BASE = math.ceil(len(CLASSES) / 2)
CLIP = {"clip_model": "stori-toy", "pretrained": "builtin"}
# paired differences printed with a CI: (name, minuend, subtrahend)
PAIRS = (("IntCoOp - CoOp", "IntCoOp", "CoOp"),
         ("IntCoOp - CoOp (a photo of a)", "IntCoOp", "CoOp (a photo of a)"),
         ("IntCoOp - IntCoOp (shuffled labels)", "IntCoOp", "IntCoOp (shuffled labels)"))


def kinds_split(seed: int, shots: int = 16, n_test: int = 250) -> dict:
    """Image features, class labels and state indices of a ToyKinds few-shot split (scenes seeded by ``seed``).

    Returns:
        ``{"train"|"test": (features [N, D] L2-normalized, labels [N], states [N] into STATES)}`` and ``"words"``
        (the attribute vocabulary, ``["wet", "dry"]``).
    """
    from stori_pl import load_clip

    model, preprocess, _ = load_clip(CLIP["clip_model"], CLIP["pretrained"])
    parts: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "test": ([], [], [])}
    for part, label, _, _, obj, image in toy_shapes_items(seed, shots, 0, n_test, KINDS_SPEC):
        parts[part][0].append(preprocess(_pil(image)))
        parts[part][1].append(label)
        parts[part][2].append(STATES.index(obj.state))
    out: dict = {"words": list(STATES)}
    with torch.no_grad():
        for part, (images, labels, states) in parts.items():
            x = torch.stack(images)
            feats = torch.cat([model.encode_image(chunk) for chunk in x.split(256)]).float()
            out[part] = (F.normalize(feats, dim=-1), torch.tensor(labels), torch.tensor(states))
    return out


def _pil(array):
    from PIL import Image

    return Image.fromarray(array)


def subsample(part: tuple, half: str) -> tuple:
    """Keep the base (first half) or new (second half) classes, labels renumbered from 0."""
    feats, labels, words = part
    keep = labels < N_BASE if half == "base" else labels >= N_BASE
    return feats[keep], labels[keep] - (0 if half == "base" else N_BASE), words[keep]


def names(half: str) -> list[str]:
    """The class names of the base or new half."""
    return list(CLASSES[:N_BASE] if half == "base" else CLASSES[N_BASE:])


def prompts(half: str) -> dict:
    """PromptSet dict of the base or new classes ("a photo of a {noun}.")."""
    cls = names(half)
    return PromptSet(cls, [[f"a photo of a {c}."] for c in cls], [[] for _ in cls]).to_dict()


def train(model, part: tuple, epochs: int, lr: float = 0.002, batch: int = 32, seed: int = 0):
    """SGD (momentum 0.9, weight decay 5e-4) with a cosine schedule over ``epochs``, mini-batches of ``batch``
    cached features; returns the model in eval mode."""
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


def accuracy(model, part: tuple, chunk: int = 500) -> float:
    """Top-1 accuracy (%) of ``model`` on ``(features [N, D], labels [N], _)``."""
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(-1) for x in part[0].split(chunk)])
    return 100.0 * float((pred == part[1]).float().mean())


def state_oracle_accuracy(half: str, part: tuple) -> float:
    """Zero-shot accuracy (%) with each image's true state in every class prompt ("a photo of a {state} {noun}.")
    — a test-time oracle: the most a correct attribute word can give the hand-crafted prompt."""
    from stori_pl.models import ZeroShotCLIP

    feats, labels, states = part
    pred = torch.empty_like(labels)
    for s, state in enumerate(STATES):
        cls = names(half)
        model = ZeroShotCLIP(**CLIP, prompts=PromptSet(cls, [[f"a photo of a {state} {c}."] for c in cls],
                                                       [[] for _ in cls]).to_dict())
        keep = states == s
        with torch.no_grad():
            pred[keep] = model(feats[keep]).argmax(-1)
    return 100.0 * float((pred == labels).float().mean())


def best_state_accuracy(half: str, part: tuple) -> float:
    """Zero-shot accuracy (%) with both states' prompts per class, a class scoring its better state ("a photo of
    a {wet|dry} {noun}.", max over the two): the state resolved on the text side, without any label."""
    from stori_pl.models import ZeroShotCLIP

    cls = names(half)
    texts = [f"a photo of a {s} {c}." for s in STATES for c in cls]
    model = ZeroShotCLIP(**CLIP, prompts=PromptSet(texts, [[t] for t in texts], [[] for _ in texts]).to_dict())
    with torch.no_grad():
        logits = model(part[0]).view(len(part[0]), len(STATES), len(cls)).amax(1)  # [N, C]
    return 100.0 * float((logits.argmax(-1) == part[1]).float().mean())


def attribute_accuracy(model, part: tuple) -> float:
    """Nearest-word accuracy (%) of ``A(f(I))`` over the state vocabulary (cosine in token-embedding space)."""
    from stori_pl.models.intcoop_parts import nearest_words

    with torch.no_grad():
        _, index = nearest_words(model.extractor(part[0]), model.word_table)
    return 100.0 * float((index[:, 0].cpu() == part[2]).float().mean())


def slot_accuracy(model, part: tuple, wrong: bool = False, chunk: int = 500) -> float:
    """Accuracy (%) of a trained IntCoOp with the attribute slot filled by each image's true state word (``wrong``:
    the other state) instead of ``A(f(I))``: a test-time oracle for the slot, which tells whether the word reaches
    the prompt and how much a perfect extractor would give."""
    feats, labels, states = part
    pred = []
    with torch.no_grad():
        for x, s in zip(feats.split(chunk), states.split(chunk)):
            ctx, _ = model.prompt_parts(x)
            text = model.instance_text(ctx, model.word_table[(1 - s) if wrong else s])  # [n, C, D]
            pred.append(torch.einsum("nd,ncd->nc", F.normalize(x, dim=-1), text).argmax(-1))
    return 100.0 * float((torch.cat(pred) == labels).float().mean())


def run_seed(seed: int, epochs: int = 20, shots: int = 16, n_test: int = 250, coop: bool = True,
             lr: float = 0.002, batch: int = 32, **intcoop_args) -> dict[str, float]:
    """One seed of every figure: base, new and HM accuracy (%) of each row of the module docstring, and
    IntCoOp's state accuracy on base and new test images (``coop=False`` skips the two CoOp rows; ``batch``: the
    mini-batch of :func:`train`)."""
    from stori_pl.models import CoOp, IntCoOp, ZeroShotCLIP

    data = kinds_split(seed, shots, n_test)
    base_train, base_test, new_test = (subsample(data[p], h) for p, h in
                                       (("train", "base"), ("test", "base"), ("test", "new")))
    tests = {"base": base_test, "new": new_test}
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for half, part in tests.items():
            out[f"zero-shot {half}"] = accuracy(ZeroShotCLIP(**CLIP, prompts=prompts(half)), part)
            out[f"zero-shot (true state) {half}"] = state_oracle_accuracy(half, part)
            out[f"zero-shot (best state) {half}"] = best_state_accuracy(half, part)
        models = {}
        if coop:
            torch.manual_seed(seed)
            models["CoOp"] = train(CoOp(**CLIP, prompts=prompts("base")), base_train, epochs, lr, batch, seed=seed)
            torch.manual_seed(seed)
            models["CoOp (a photo of a)"] = train(CoOp(**CLIP, ctx_init="a photo of a", prompts=prompts("base")),
                                                  base_train, epochs, lr, batch, seed=seed)
        for name, shuffle in (("IntCoOp", False), ("IntCoOp (shuffled labels)", True)):
            words = base_train[2]
            if shuffle:
                words = words[torch.randperm(len(words), generator=torch.Generator().manual_seed(seed))]
            torch.manual_seed(seed)
            model = IntCoOp(**CLIP, attribute_words=data["words"], prompts=prompts("base"), **intcoop_args)
            models[name] = train(model, (base_train[0], base_train[1], words), epochs, lr, batch, seed=seed)
        for name, model in models.items():
            for half, part in tests.items():
                if half == "new":
                    model.build(prompts("new"))  # same trained parts, new class names
                out[f"{name} {half}"] = accuracy(model, part)
                if name.startswith("IntCoOp"):
                    out[f"{name} state {half}"] = attribute_accuracy(model, part)
                if name == "IntCoOp":
                    out[f"IntCoOp (true state in slot) {half}"] = slot_accuracy(model, part)
                    out[f"IntCoOp (wrong state in slot) {half}"] = slot_accuracy(model, part, wrong=True)
    for name in dict.fromkeys(k.rsplit(" ", 1)[0] for k in list(out) if k.endswith(" base")):
        if f"{name} new" in out and not name.endswith(" state"):
            out[f"{name} HM"] = harmonic_mean(out[f"{name} base"], out[f"{name} new"])
    return out


def state_probe(seed: int, n_train: int = 250, n_test: int = 250, steps: int = 200) -> dict[str, float]:
    """Is the state decodable from the image embedding the same way for every noun? A logistic-regression probe
    (L-BFGS, L2 1e-3) of wet vs dry on ``n_train`` base-class images per class, tested on base and new test images.

    Returns:
        ``{"state probe base": %, "state probe new": %}`` (chance 50 %).
    """
    train_split, test_split = kinds_split(seed + 1000, n_train, 1)["train"], kinds_split(seed, 1, n_test)["test"]
    feats, _, states = subsample(train_split, "base")
    w = torch.zeros(feats.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps)
    target = (states == 0).float()

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(10 * feats @ w + b, target) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    out = {}
    with torch.no_grad():
        for half in ("base", "new"):
            x, _, s = subsample(test_split, half)
            hit = (10 * x @ w + b > 0) == (s == 0)
            out[f"state probe {half}"] = 100.0 * float(hit.float().mean())
    return out


# two-sided 95 % Student t quantiles, df 1..30
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired_ci(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its t-based 95 % CI ``(mean, low, high)`` (paired over seeds)."""
    d = [x - y for x, y in zip(a, b)]
    m = statistics.mean(d)
    if len(d) < 2:
        return m, m, m
    half = _T95[min(len(d) - 1, len(_T95)) - 1] * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - half, m + half


def summary(runs: list[dict[str, float]]) -> list[str]:
    """Lines of the printed table: every key as mean ± sd and per seed, then the paired differences."""
    lines = []
    for key in runs[0]:
        values = [r[key] for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = " ".join(f"{v:5.1f}" for v in values)
        lines.append(f"{key:40s} {statistics.mean(values):6.1f} ± {sd:4.1f}   {per_seed}")
    for label, a, b in PAIRS:
        for half in ("base", "new", "HM"):
            if f"{a} {half}" in runs[0] and f"{b} {half}" in runs[0]:
                m, lo, hi = paired_ci([r[f"{a} {half}"] for r in runs], [r[f"{b} {half}"] for r in runs])
                lines.append(f"{label + ' ' + half:48s} {m:+6.1f}  95% CI [{lo:+.1f}, {hi:+.1f}]")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--n_test", type=int, default=250, help="test images per class (4 classes per half)")
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--lambda_attr", type=float, default=1.0)
    p.add_argument("--lambda_reg", type=float, default=1.0)
    p.add_argument("--probe", action="store_true",
                   help="only the state probe: wet vs dry from base-class image embeddings, tested on both halves")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.shots < 1 or args.n_test < 1:
        p.error("--epochs, --shots and --n_test must be >= 1")  # exit status 2
    torch.set_num_threads(args.threads)
    if args.probe:
        print("\n".join(summary([state_probe(s, n_test=args.n_test) for s in args.seeds])))
        return 0
    runs = [run_seed(s, args.epochs, args.shots, args.n_test, lr=args.lr, lambda_attr=args.lambda_attr,
                     lambda_reg=args.lambda_reg) for s in args.seeds]
    print("\n".join(summary(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
