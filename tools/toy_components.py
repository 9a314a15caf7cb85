"""Toy-world figures of a trained sparse autoencoder: how many components carry a toy attribute label and how
pure their top images are (the toy world knows every image's attributes).

``python tools/toy_components.py CKPT`` describes every latent of the SAE checkpoint over the toy images
it was trained on (``<root>/toy_images_n<N>_seed<S>``, written by ``stori fit --config sae/toy_shapes.yaml``)
with the toy attribute words plus the shipped general vocabulary, and prints the figures of
docs/components.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stori_pl.interpret.concepts import (
    ComponentTable,
    describe_components,
    load_vocabulary,
)
from stori_pl.toy.images import (
    attribute_vocabulary,
    toy_images_folder,
    write_toy_images,
)

__all__ = ["label_purity", "toy_component_report", "main"]


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


def toy_component_report(ckpt: str, root: str = "data", n_images: int = 4000, seed: int = 0, top_n: int = 10,
                         cache_dir: str | None = None) -> dict:
    """Figures of an SAE trained on toy images: labelled components, purity, distinct labels, dead latents."""
    from stori_pl.models import SparseAutoencoder, load_checkpoint

    module = load_checkpoint(ckpt, expect=SparseAutoencoder)
    paths, attrs = write_toy_images(toy_images_folder(root, n_images, seed), n_images, seed)
    vocab = list(dict.fromkeys([*attribute_vocabulary(), *load_vocabulary()]))
    table = describe_components(module, module.hparams.clip_model, paths, vocab, top_n, cache_dir=cache_dir)
    rows = label_purity(table, attrs)
    pure = [r for r in rows if r["purity"] >= 0.8]
    full = int((table.top_index >= 0).all(1).sum())
    return {"latents": len(table), "firing_on_top_n": full, "never_fire": int((~table.fires()).sum()),
            "toy_labelled": len(rows), "pure_0.8": len(pure),
            "mean_purity": round(sum(r["purity"] for r in rows) / max(1, len(rows)), 3),
            "distinct_pure_labels": sorted({r["label"] for r in pure}),
            "attributes": sorted({r["attribute"] for r in pure})}


def main(argv: list[str] | None = None) -> int:
    """``python tools/toy_components.py CKPT [--root data] [--n_images 4000] [--top_n 10]``."""
    p = argparse.ArgumentParser(prog="python tools/toy_components.py", description=__doc__)
    p.add_argument("ckpt")
    p.add_argument("--root", default="data")
    p.add_argument("--n_images", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top_n", type=int, default=10)
    p.add_argument("--cache_dir", default=None)
    a = p.parse_args(argv)
    report = toy_component_report(a.ckpt, a.root, a.n_images, a.seed, a.top_n, a.cache_dir)
    for key, value in report.items():
        print(f"{key:>22}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
