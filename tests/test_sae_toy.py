"""Toy-world evidence for SAE components (docs/components.md): an SAE trained on the toy CLIP's image tower (CLS
after the last block) has component labels that name what each latent is most selective for, and an untrained
SAE's do not.

A label is right when it names the attribute value of best F1 of the latent's firing set over held-out images
(:func:`stori_pl.interpret.concepts.label_correctness`). The labels come from the text side only — the toy
attribute values, each embedded through a caption-style prompt (as ``stori components --labels toy``), chosen by
:func:`~stori_pl.interpret.concepts.selectivity_scores` over the SAE's training images; the held-out images'
attributes only check them.

Measured with this file's settings (800 training + 750 held-out images, m = 256, k = 8, 48 epochs; SAE seeds 0–4
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

N_IMAGES, N_CHECK, N_LATENTS, K, EPOCHS, LR, BATCH, TOP_N = 800, 750, 256, 8, 48, 2e-3, 256, 10
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


def correctness(r: dict, sae: TopKSAE, method: str = "selectivity"):
    return label_correctness(firing_sets(sae, r["check_acts"]), r["check_attrs"], labels_of(r, sae, method),
                             r["prompts"])


def test_labels_name_what_the_latent_is_most_selective_for(toy_run):
    """≥ 75 % of the trained SAE's labelled components are right; an untrained SAE (random directions: whatever a
    random direction's firing set leans to, its label often names it too) and the authors' top-image alignment
    (labels from the 10 top images, which share more than what the latent selects for) both fail it."""
    r = toy_run
    trained, untrained = correctness(r, r["trained"]), correctness(r, r["untrained"])
    authors = correctness(r, r["trained"], "alignment")
    print(f"\nlabel correctness: trained {trained.right}/{trained.labelled} = {trained.share:.3f}, untrained "
          f"{untrained.right}/{untrained.labelled} = {untrained.share:.3f}, authors' alignment labels "
          f"{authors.right}/{authors.labelled} = {authors.share:.3f}")
    # measured (seeds 0-4): see LABELS_MEASURED; asserted: trained >= 0.75 (min - margin), untrained and the
    # authors' labels < 0.75 (their max + margin), and the trained SAE labels at least 40 components
    assert trained.share >= 0.75 and trained.labelled >= 40, trained.rows
    assert untrained.share < 0.75
    assert authors.share < 0.75


def test_trained_latents_are_more_selective_than_untrained(toy_run):
    """Selectivity — a latent firing on the images of one attribute value and not on others — is what training
    adds (an untrained SAE's latents are random directions)."""
    r = toy_run
    counts = {}
    for name in ("trained", "untrained"):
        _, f1 = value_f1(firing_sets(r[name], r["check_acts"]), r["check_attrs"])  # [m, V]
        counts[name] = int((f1.max(1).values >= 0.5).sum())
    print(f"\nlatents with attribute F1 >= 0.5 (held out): {counts}")
    # measured (seeds 0-4): see SELECTIVE_MEASURED; asserted: 1.5x and about half the smallest trained count
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
    # measured (seeds 0-2, v2): 0.81-0.82 (untrained -1.57 to -1.79), dead 0.64-0.68
    assert ev >= 0.5 and ev0 < 0
    assert dead < 0.95
