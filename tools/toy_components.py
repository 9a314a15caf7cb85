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
from stori_pl.toy.world import attribute_prompts

__all__ = ["label_purity", "toy_label_vocabularies", "toy_component_report", "main"]


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
            report[f"label_correctness_{name}_{method}"] = f"{lc.right}/{lc.labelled} = {lc.share:.3f}"
            if name == "bare" and method == "selectivity":
                rows = label_purity(table, attrs)
                report["firing_on_top_n"] = int((table.top_index >= 0).all(1).sum())
                report["bare_toy_labelled_pure_0.8"] = f"{sum(r['purity'] >= 0.8 for r in rows)}/{len(rows)}"
            if name == "toy" and method == "selectivity":
                wrong = [r for r in lc.rows if not r["right"]]
                report["wrong_toy_selectivity"] = ", ".join(
                    f"{r['component']}:{r['labelled_value']}->{r['best_value']}({r['best_f1']:.2f})" for r in wrong[:12])
    return report


def main(argv: list[str] | None = None) -> int:
    """``python tools/toy_components.py CKPT [--root data] [--n_images 4000] [--top_n 10] [--check_images 2000]``."""
    p = argparse.ArgumentParser(prog="python tools/toy_components.py", description=__doc__)
    p.add_argument("ckpt")
    p.add_argument("--root", default="data")
    p.add_argument("--n_images", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top_n", type=int, default=10)
    p.add_argument("--check_images", type=int, default=2000)
    p.add_argument("--cache_dir", default=None)
    a = p.parse_args(argv)
    report = toy_component_report(a.ckpt, a.root, a.n_images, a.seed, a.top_n, a.check_images, a.cache_dir)
    for key, value in report.items():
        print(f"{key:>36}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
