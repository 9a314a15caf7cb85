"""Shared toy-world fixtures of the component tests: the toy CLIP, a small SAE on its last block, toy images.

Built once per test session (``functools.lru_cache``) and kept small for 2 CPU cores: 600 images for the SAE
and the concepts, 64 latents with k = 4 on the CLS residual after the last of the 4 vision blocks.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLOCK = -1  # after the last vision block
N_POOL, N_LATENTS, K, STEPS = 600, 128, 8, 300


@dataclass
class ToyComponents:
    model: object
    preprocess: object
    tokenizer: object
    sae: object
    pool: torch.Tensor  # preprocessed pool images [N, 3, 64, 64]
    pool_objects: list
    pool_embeddings: torch.Tensor  # [N, D] normalized
    concepts: torch.Tensor  # [m, D] mean embedding of each latent's top-10 pool images
    general: dict  # toy attribute value -> text embedding [D]
    empty: torch.Tensor  # T("") [D]

    def images(self, objects, rng) -> torch.Tensor:
        """Preprocessed renders of ``objects`` ``[N, 3, 64, 64]``."""
        from PIL import Image

        from stori_pl.toy.world import render

        return torch.stack([self.preprocess(Image.fromarray(render(o, rng))) for o in objects])

    def text(self, prompts: list[str]) -> torch.Tensor:
        """Normalized mean text embedding ``[D]`` of ``prompts``."""
        with torch.no_grad():
            emb = F.normalize(self.model.encode_text(self.tokenizer(prompts)).float(), dim=-1)
        return F.normalize(emb.mean(0), dim=0)


def train_sae(acts: torch.Tensor, seed: int = 0):
    """A TopKSAE fitted to ``acts [N, d]`` with the authors' loss (AdamW, a few hundred steps)."""
    from stori_pl.image.sae import TopKSAE

    torch.manual_seed(seed)
    sae = TopKSAE(acts.shape[1], N_LATENTS, K)
    opt = torch.optim.AdamW(sae.parameters(), lr=2e-3)
    for _ in range(STEPS):
        loss = sae.loss(acts[torch.randint(0, len(acts), (128,))])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sae.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def toy_components() -> ToyComponents:
    """The shared fixture (see the module docstring)."""
    from stori_pl import load_clip
    from stori_pl.image.tower import cls_activation
    from stori_pl.interpret.components import sae_codes
    from stori_pl.toy.world import ATTRIBUTES, attribute_prompts, sample_object

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than two fighting
    try:
        model, preprocess, tokenizer = load_clip("stori-toy", pretrained="builtin")
        model = model.eval().requires_grad_(False)
        rng = random.Random(0)
        objects = [sample_object(rng, heldout=None) for _ in range(N_POOL)]
        world = ToyComponents(model, preprocess, tokenizer, None, None, objects, None, None, {}, None)
        world.pool = world.images(objects, rng)
        with torch.no_grad():
            acts = cls_activation(model, world.pool, BLOCK)
            world.pool_embeddings = F.normalize(model.encode_image(world.pool).float(), dim=-1)
        world.sae = train_sae(acts)
        with torch.no_grad():
            top = sae_codes(world.sae, acts).topk(10, dim=0).indices  # [10, m]
        world.concepts = world.pool_embeddings[top].mean(0)  # [m, D]
        world.general = {v: world.text(p) for a in ATTRIBUTES for v, p in attribute_prompts(a).items()}
        world.empty = world.text([""])
        return world
    finally:
        torch.set_num_threads(threads)
