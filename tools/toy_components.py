"""Toy-world figures of a trained sparse autoencoder: are its component labels right? (The toy world knows every
image's attributes.)

``python tools/toy_components.py CKPT`` describes every latent of the SAE checkpoint over the toy images it was
trained on (``<root>/toy_images_n<N>_seed<S>``, written by ``stori fit --config sae/toy_shapes.yaml``) and checks
the labels against the attributes of held-out toy images (``--check_images`` images of seed ``S + 1``): a label
is right when it names the attribute value of best F1 of the latent's firing set
(:func:`stori_pl.interpret.concepts.label_correctness`). Two vocabularies: ``toy`` — the toy attribute values, each
embedded through a caption-style prompt (``stori components --labels toy``) — and ``bare`` — the toy words bare
plus the shipped general list. Both labelling methods are reported (``selectivity``, the default, and the
authors' ``alignment``). Prints the figures of docs/components.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stori_pl.data.features import cls_activations
from stori_pl.interpret.concepts import (
    LABEL_METHODS,
    ComponentTable,
    describe_components,
    firing_sets,
    label_correctness,
    load_vocabulary,
)
from stori_pl.toy.images import (
    attribute_vocabulary,
    toy_images_folder,
    write_toy_images,
)
from stori_pl.toy.world import attribute_prompts, render

SELECTIVE_F1 = 0.3  # a latent whose best value has a lower F1 is selective for none (tests/test_sae_toy.py)

__all__ = ["label_purity", "toy_label_vocabularies", "toy_component_report", "spurious_reliance", "main"]


def label_purity(table: ComponentTable, attributes: Sequence[dict[str, str]]) -> list[dict]:
    """For each component labelled with a toy attribute word and firing on all its top images: the label,
    the attribute and the share of its top images that have that value (its purity)."""
    toy = attribute_vocabulary()
    out = []
    for k in range(len(table)):
        idx = table.top_index[k].tolist()
        if table.labels[k] not in toy or min(idx) < 0:
            continue
        attr, value = toy[table.labels[k]]
        purity = sum(attributes[i][attr] == value for i in idx) / len(idx)
        out.append({"component": k, "label": table.labels[k], "attribute": attr, "purity": purity,
                    "alignment": float(table.alignment[k]), "clarity": float(table.clarity[k])})
    return out


def toy_label_vocabularies() -> dict[str, tuple[list[str], dict[str, tuple[str, str]]]]:
    """``name -> (texts embedded, text -> (attribute, value))``: ``toy`` (caption-style prompts, as
    ``stori components --labels toy``) and ``bare`` (toy words bare + the shipped general list)."""
    toy = attribute_vocabulary()
    prompts = {attribute_prompts(key)[value][0]: (key, value) for key, value in toy.values()}
    return {"toy": (list(prompts), prompts),
            "bare": (list(dict.fromkeys([*toy, *load_vocabulary()])), toy)}


def toy_component_report(ckpt: str, root: str = "data", n_images: int = 4000, seed: int = 0, top_n: int = 10,
                         check_images: int = 2000, cache_dir: str | None = None) -> dict:
    """Label correctness per vocabulary and labelling method, purity, dead latents of an SAE trained on toy images."""
    from stori_pl.models import SparseAutoencoder, load_checkpoint

    module = load_checkpoint(ckpt, expect=SparseAutoencoder)
    h = module.hparams
    paths, attrs = write_toy_images(toy_images_folder(root, n_images, seed), n_images, seed)
    held, held_attrs = write_toy_images(toy_images_folder(root, check_images, seed + 1), check_images, seed + 1)
    fires = firing_sets(module.sae, cls_activations(held, h.clip_model, h.pretrained, h.block, cache_dir,
                                                    progress=False))
    report = {"latents": len(module.sae.decoder_directions()),
              "never_fire_check": int((fires.sum(0) == 0).sum())}
    for name, (texts, values) in toy_label_vocabularies().items():
        for method in LABEL_METHODS:
            table = describe_components(module, h.clip_model, paths, texts, top_n, cache_dir=cache_dir,
                                        label_by=method)
            lc = label_correctness(fires, held_attrs, table.labels, values)
            sel = label_correctness(fires, held_attrs, table.labels, values, min_f1=SELECTIVE_F1)
            report[f"label_correctness_{name}_{method}"] = (f"{lc.right}/{lc.labelled} = {lc.share:.3f} (right and "
                                                            f"selective, F1 >= {SELECTIVE_F1}: {sel.share:.3f})")
            if name == "bare" and method == "selectivity":
                rows = label_purity(table, attrs)
                report["firing_on_top_n"] = int((table.top_index >= 0).all(1).sum())
                report["bare_toy_labelled_pure_0.8"] = f"{sum(r['purity'] >= 0.8 for r in rows)}/{len(rows)}"
            if name == "toy" and method == "selectivity":
                wrong = [r for r in lc.rows if not r["right"]]
                report["wrong_toy_selectivity"] = ", ".join(
                    f"{r['component']}:{r['labelled_value']}->{r['best_value']}({r['best_f1']:.2f})"
                    for r in wrong[:12])
    return report


def spurious_reliance(ckpt: str, root: str = "data", n_images: int = 4000, seed: int = 0, n_train: int = 6,
                      n_test: int = 4, cache_dir: str | None = None) -> dict:
    """Is the spurious distractor of ToyShapesSpurious flagged as unexpected reliance (what ``stori components
    --split`` computes: mean Act×Grad per class, :func:`~stori_pl.interpret.components.unexpected_reliance` with the
    class's words as expected vocabulary and the toy labels as general one)?

    Two cosine linear probes on toy image features, ``n_train`` training scenes a class: one on ToyShapesSpurious
    (the distractor's color follows the class), one on ToyShapes (the control). Per class, the top 5 components
    over ``n_test`` test scenes (and over the training scenes) are listed; a class *flags the distractor* when one
    of them labelled with its spurious color (table label or reliance label) is flagged.
    """
    import random

    import torch
    import torch.nn.functional as F
    from PIL import Image

    from stori_pl.interpret.components import class_attribution, unexpected_reliance
    from stori_pl.interpret.concepts import text_embeddings
    from stori_pl.models import SparseAutoencoder, load_checkpoint
    from stori_pl.text.clip import load_clip
    from stori_pl.toy.data import (
        BENCHMARK_LIGHT,
        BENCHMARK_NOISE,
        SHAPES_SPEC,
        SPURIOUS_SPEC,
        TOY_CLASSES,
        spurious_color,
    )

    module = load_checkpoint(ckpt, expect=SparseAutoencoder).eval()
    h, sae = module.hparams, module.sae.requires_grad_(False)
    model, preprocess, _ = load_clip(h.clip_model, h.pretrained)
    model = model.eval().requires_grad_(False)
    prompts = {label: attribute_prompts(k)[v][0] for label, (k, v) in attribute_vocabulary().items()}
    paths, _ = write_toy_images(toy_images_folder(root, n_images, seed), n_images, seed)
    table = describe_components(module, h.clip_model, paths, list(prompts.values()), 16, cache_dir=cache_dir)
    short = {p: label for label, p in prompts.items()}
    labels = [short.get(label, label) for label in table.labels]
    text = text_embeddings(h.clip_model, h.pretrained, [*prompts.values(), ""])
    general, empty = dict(zip(prompts, text[:-1])), text[-1]

    def scenes(spec, part: str, n: int, scene_seed: int):
        rng, images, ys = random.Random(scene_seed), [], []
        for c in range(len(TOY_CLASSES)):
            for _ in range(n):
                obj = spec.scene(c, part, rng)
                pixels = render(obj, rng, noise=BENCHMARK_NOISE, light=BENCHMARK_LIGHT)
                images.append(preprocess(Image.fromarray(pixels)))
                ys.append(c)
        return torch.stack(images), torch.tensor(ys)

    def probe(feats, ys, steps: int = 300):
        torch.manual_seed(0)
        w = torch.zeros(len(TOY_CLASSES), feats.shape[1], requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.05)
        for _ in range(steps):
            loss = F.cross_entropy(30 * feats @ F.normalize(w, dim=-1).T, ys)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return F.normalize(w.detach(), dim=-1)

    test_x, test_y = scenes(SPURIOUS_SPEC, "test", n_test, 7)
    with torch.no_grad():
        test_f = F.normalize(model.encode_image(test_x).float(), dim=-1)
    report = {}
    for name, spec in (("spurious", SPURIOUS_SPEC), ("plain", SHAPES_SPEC)):
        x, y = scenes(spec, "train", n_train, 1)
        with torch.no_grad():
            feats = F.normalize(model.encode_image(x).float(), dim=-1)
        w = probe(feats, y)
        report[f"{name}_probe_test_accuracy"] = round(float(((test_f @ w.T).argmax(1) == test_y).float().mean()), 3)
        for split, (sx, sy) in (("test", (test_x, test_y)), ("train", (x, y))):
            flagging, flagged, share = 0, 0, 0.0
            for c, (pattern, color, shape) in enumerate(TOY_CLASSES):
                attr = class_attribution(model, sae, sx[sy == c], h.block, w[c])
                rows = unexpected_reliance(attr, table.concept, general,
                                           {word: general[word] for word in (pattern, color, shape)}, empty, top=5)
                cue = spurious_color((pattern, color, shape))
                flagging += any(r.flagged and cue in (r.label, labels[r.component]) for r in rows)
                flagged += sum(r.flagged for r in rows)
                share += sum(r.share for r in rows if cue in (r.label, labels[r.component]))
            report[f"{name}_probe_{split}"] = (f"classes flagging the distractor {flagging}/48, flagged {flagged}, "
                                               f"mean share of spurious-color components {share / 48:.3f}")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python tools/toy_components.py CKPT [--root data] [--n_images 4000] [--top_n 10] [--check_images 2000]
    [--spurious]``."""
    p = argparse.ArgumentParser(prog="python tools/toy_components.py", description=__doc__)
    p.add_argument("ckpt")
    p.add_argument("--root", default="data")
    p.add_argument("--n_images", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top_n", type=int, default=10)
    p.add_argument("--check_images", type=int, default=2000)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--spurious", action="store_true", help="instead: is ToyShapesSpurious's distractor flagged?")
    a = p.parse_args(argv)
    if a.spurious:
        report = spurious_reliance(a.ckpt, a.root, a.n_images, a.seed, cache_dir=a.cache_dir)
    else:
        report = toy_component_report(a.ckpt, a.root, a.n_images, a.seed, a.top_n, a.check_images, a.cache_dir)
    for key, value in report.items():
        print(f"{key:>36}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
