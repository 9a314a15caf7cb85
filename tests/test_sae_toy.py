"""Toy-world evidence for SAE components (docs/components.md): an SAE trained on the toy CLIP's image tower (CLS
after the last block) has component labels that name what each latent is most selective for, and an untrained
SAE's do not.

A label is right when it names the attribute value of best F1 of the latent's firing set over held-out images
(:func:`stori_pl.interpret.concepts.label_correctness`). The labels come from the text side only — the toy
attribute values, each embedded through a caption-style prompt (as ``stori components --labels toy``), chosen by
:func:`~stori_pl.interpret.concepts.selectivity_scores` over the SAE's training images; the held-out images'
attributes only check them.

Measured with this file's settings (800 training + 500 held-out images, m = 256, k = 8, 12 epochs; SAE seeds 0–4
on image seeds 0–4 — ``STORI_SAE_TOY_SEEDS=0,1,2,3,4`` reruns them): see the thresholds' comments.
"""

from __future__ import annotations

import os
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stori_pl.image.sae import TopKSAE, explained_variance
from stori_pl.image.tower import cls_activation, cls_readout
from stori_pl.interpret.concepts import (
    concept_alignment,
    concept_vectors,
    firing_sets,
    label_correctness,
    selectivity_scores,
    text_embeddings,
    top_activating,
    value_f1,
)
from stori_pl.text.clip import load_clip
from stori_pl.toy.images import attribute_vocabulary
from stori_pl.toy.world import attribute_prompts, render, sample_object

N_IMAGES, N_CHECK, N_LATENTS, K, EPOCHS, LR, BATCH, TOP_N = 800, 500, 256, 8, 12, 2e-3, 256, 10
SELECTIVE_F1 = 0.3  # a latent whose best value has a lower F1 is selective for none
# thresholds from SAE seeds 0-4 (this file's settings; STORI_SAE_TOY_SEEDS=0,1,2,3,4), margins in the test
TRAINED_SHARE, SELECTIVE_SHARE = 0.70, 0.57
SEEDS = [int(s) for s in os.environ.get("STORI_SAE_TOY_SEEDS", "0").split(",")]


def toy_activations(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """``n`` random toy images -> (CLS activations after the last block [n, 128], normalized embeddings, attributes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, preprocess, _ = load_clip("stori-toy", "builtin")
    rng = random.Random(seed)
    objs = [sample_object(rng, heldout=None) for _ in range(n)]
    images = torch.stack([preprocess(Image.fromarray(render(o, rng))) for o in objs])
    with torch.no_grad():
        acts = torch.cat([cls_activation(model, x, -1) for x in images.split(200)])
        emb = F.normalize(cls_readout(model, acts), dim=-1)  # exact image embeddings after the last block
    return acts, emb, [o.as_dict() for o in objs]


def train_sae(acts: torch.Tensor, seed: int, epochs: int = EPOCHS) -> TopKSAE:
    """The authors' objective and optimizer (AdamW, eps 1e-7, clip 1.0), a short schedule."""
    torch.manual_seed(seed)
    sae = TopKSAE(acts.shape[1], N_LATENTS, K)
    opt = torch.optim.AdamW(sae.parameters(), lr=LR, eps=1e-7)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(acts), generator=g).split(BATCH):
            opt.zero_grad()
            sae.loss(acts[idx]).backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
    return sae.eval()


@pytest.fixture(scope="module", params=SEEDS)
def toy_run(request):
    seed = request.param
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    acts, emb, attrs = toy_activations(N_IMAGES, seed)
    check_acts, _, check_attrs = toy_activations(N_CHECK, 1000 + seed)  # held out: other scenes
    toy = attribute_vocabulary()
    prompts = {attribute_prompts(key)[value][0]: (key, value) for key, value in toy.values()}
    yield {"acts": acts, "emb": emb, "attrs": attrs, "check_acts": check_acts, "check_attrs": check_attrs,
           "prompts": prompts, "text": text_embeddings("stori-toy", "builtin", [*prompts, ""]),
           "trained": train_sae(acts, seed), "untrained": train_sae(acts, seed, epochs=0)}
    torch.set_num_threads(threads)


def labels_of(r: dict, sae: TopKSAE, method: str) -> list[str]:
    """Each latent's label among the toy prompts, chosen on the SAE's training images from the text side only."""
    words, text = list(r["prompts"]), r["text"]
    fires = firing_sets(sae, r["acts"])  # [N, m]
    if method == "selectivity":
        scores = selectivity_scores(fires, r["emb"] @ text[:-1].T)
    else:  # the authors' alignment of the top images' mean embedding
        _, index = top_activating(sae, r["acts"], TOP_N)
        scores = concept_alignment(concept_vectors(r["emb"], index), text[:-1], text[-1])
    return [words[i] if f else "" for i, f in zip(scores.argmax(1).tolist(), fires.any(0).tolist())]


def correctness(r: dict, sae: TopKSAE, method: str = "selectivity", min_f1: float = 0.0):
    return label_correctness(firing_sets(sae, r["check_acts"]), r["check_attrs"], labels_of(r, sae, method),
                             r["prompts"], min_f1=min_f1)


def test_labels_name_what_the_latent_is_most_selective_for(toy_run):
    """Label correctness, two ways: the share of labelled components whose label names the value of best F1
    (the issue's definition; ``label_correctness``), and the share that also *are* selective for it (F1 ≥
    SELECTIVE_F1). An untrained SAE's latents are random directions: whatever a random firing set leans to, its
    label often names it too (so its plain share is well above chance, but under the 80 % target), yet few of them
    are selective for anything — which the second share shows. The authors' top-image alignment labels (the 10
    top images share more than what the latent selects for) fail both."""
    r = toy_run
    shares = {}
    for name, sae, method in (("trained", r["trained"], "selectivity"), ("untrained", r["untrained"], "selectivity"),
                              ("authors", r["trained"], "alignment")):
        plain, selective = correctness(r, sae, method), correctness(r, sae, method, SELECTIVE_F1)
        shares[name] = (plain.share, selective.share, plain.labelled)
    print("\nlabel correctness (share right, share right and selective, labelled): "
          + ", ".join(f"{k} {a:.3f} / {b:.3f} / {n}" for k, (a, b, n) in shares.items()))
    # measured (seeds 0-4, this file's settings), mean ± sd (min..max):
    #   share right: trained 0.798 ± 0.035 (0.761..0.842), untrained 0.654 ± 0.045 (0.596..0.703),
    #                authors' labels 0.395 ± 0.044 (0.354..0.448); trained labels 65-76 components
    #   share right and selective: trained 0.684 ± 0.021 (0.657..0.708), untrained 0.396 ± 0.053 (0.347..0.482),
    #                authors' labels 0.364 ± 0.037 (0.323..0.403)
    # asserted: trained share >= 0.70 (min - 0.06) with >= 40 labelled; untrained < 0.80 (the target; max + 0.10),
    # authors' < 0.60 (max + 0.15); selective share: trained >= 0.57 > untrained, authors' (min - 0.087, max + 0.088)
    assert shares["trained"][0] >= TRAINED_SHARE and shares["trained"][2] >= 40, shares
    assert shares["untrained"][0] < 0.8 and shares["authors"][0] < 0.6, shares  # both fail the 80 % target
    assert shares["trained"][1] >= SELECTIVE_SHARE, shares
    assert shares["untrained"][1] < SELECTIVE_SHARE and shares["authors"][1] < SELECTIVE_SHARE, shares


def test_trained_latents_are_more_selective_than_untrained(toy_run):
    """Selectivity — a latent firing on the images of one attribute value and not on others — is what training
    adds (an untrained SAE's latents are random directions)."""
    r = toy_run
    counts = {}
    for name in ("trained", "untrained"):
        _, f1 = value_f1(firing_sets(r[name], r["check_acts"]), r["check_attrs"])  # [m, V]
        counts[name] = int((f1.max(1).values >= 0.5).sum())
    print(f"\nlatents with attribute F1 >= 0.5 (held out): {counts}")
    # measured (seeds 0-4): trained 28-37, untrained 13-19 (ratio 1.65-2.85); asserted: 1.5x and about half the
    # smallest trained count
    assert counts["trained"] >= 1.5 * counts["untrained"] and counts["trained"] >= 15


def test_reconstruction_and_dead_latents(toy_run):
    r = toy_run
    with torch.no_grad():
        x_hat, z = r["trained"].reconstruct(r["acts"])
        ev = float(explained_variance(F.normalize(r["acts"], dim=-1), F.normalize(x_hat, dim=-1)))
        dead = 1 - float((z != 0).any(0).float().mean())
        _, z0 = r["untrained"].reconstruct(r["acts"])
        x0 = r["untrained"].decode(z0)
        ev0 = float(explained_variance(F.normalize(r["acts"], dim=-1), F.normalize(x0, dim=-1)))
    print(f"\nexplained variance (normalized) {ev:.3f} (untrained {ev0:.3f}), dead latents {dead:.3f}")
    # measured (seeds 0-4, v2): 0.807-0.819 (untrained -1.56 to -1.79), dead 0.637-0.691
    assert ev >= 0.5 and ev0 < 0
    assert dead < 0.95
