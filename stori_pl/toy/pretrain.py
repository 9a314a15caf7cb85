"""Contrastive pre-training of the tiny `stori-toy` CLIP (v2) on the procedural toy world (pure torch).

Run through ``stori toy-pretrain`` (see :mod:`stori_pl.cli.toy_pretrain`). Fresh scenes and captions are drawn
every step from :mod:`stori_pl.toy.world`, so there is no dataset on disk. Reproducible from the seed (up to CPU
kernel non-determinism across machines). Outputs: fp16 safetensors of ``model.state_dict()`` and a provenance
JSON (command, settings, wall time, held-out zero-shot accuracies, the block-7 word sensitivity).

**Late reading.** A tiny text tower trained on short captions gathers a caption into its EOT token within its
first blocks (v1: by block 2 of 8), so reweighting words from block 7 on — SToRI's setting in CLIP ViT-B and
ViT-L — would change nothing. Large CLIPs keep attending to content tokens in late blocks; to give the toy tower
the same property, a share of the captions (``late_drop``) has the tokens of one claimed value masked out as
attention keys from a random block on (every block equally likely), and the caption then counts as not making
that claim. Masking a word from block ``b`` on is exactly SToRI with weight 0 from start block ``b``, so the
tower learns that a word keeps its meaning at every depth; nothing about weights other than 0 and 1, nor about
which words discriminate which classes, is trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stori_pl.text.clip import register_model_configs
from stori_pl.toy import world as toy
from stori_pl.utils import atomic_path, write_json

MODEL_NAME = "stori-toy"
MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OpenAI normalization (the model's preprocess)
STD = (0.26862954, 0.26130258, 0.27577711)
NEG = -1e4  # additive mask of a dropped key (finite: bf16-safe, exp underflows to 0)


@dataclass
class ToyTrainConfig:
    """Settings of one pre-training run.

    Attributes:
        steps: Optimizer steps.
        batch_size: Image-caption pairs per step (fresh ones every step).
        lr: Peak AdamW learning rate (linear warmup, then cosine to 0).
        warmup: Warmup steps.
        weight_decay: AdamW weight decay on matrices (not on gains, biases, logit scale).
        seed: Seeds model init and the world's random stream.
        threads: torch intra-op threads (1: on a busy or shared CPU, 2 OpenMP threads are several times slower).
        bf16: CPU autocast to bfloat16 for matmuls.
        late_drop: Share of captions with one claimed value masked as attention keys from a random block on.
        distractor: Probability of a distractor object in a training scene.
        kind: Probability that a training scene's main object takes a kind's look.
        p_wrong: Probability that a caption states a mentioned value wrongly (label noise).
        eval_every: Steps between held-out zero-shot evaluations / checkpoints (0: only at the end).
        eval_images: Held-out images used for the zero-shot accuracies.
    """

    steps: int = 800
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 40
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 1
    bf16: bool = True
    late_drop: float = 0.3
    distractor: float = 0.5
    kind: float = 0.35
    p_wrong: float = 0.03
    eval_every: int = 100
    eval_images: int = 1000
    extra: dict = field(default_factory=dict)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 → [N, 3, H, W] float normalized like the model's preprocess."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)  # [N, 3, H, W]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def heldout_eval_set(n: int, seed: int = 777) -> tuple[torch.Tensor, list[toy.ToyObject]]:
    """``n`` scenes of held-out (shape, color, pattern) triples (half with a distractor), fixed by ``seed``."""
    rng = random.Random(seed)
    objs = [toy.sample_object(rng, heldout=True, distractor=0.5) for _ in range(n)]
    return to_tensor(np.stack([toy.render(o, rng) for o in objs])), objs


def kind_eval_set(n: int, seed: int = 778) -> tuple[torch.Tensor, list[toy.ToyObject]]:
    """``n`` scenes whose main object has a kind's look (half with a distractor), fixed by ``seed``."""
    rng = random.Random(seed)
    objs = [toy.sample_object(rng, heldout=None, distractor=0.5, kind=1.0) for _ in range(n)]
    return to_tensor(np.stack([toy.render(o, rng) for o in objs])), objs


def _class_embeddings(model, tokenizer, prompts: list[list[str]]) -> torch.Tensor:
    """[C, D]: normalized mean of each class's normalized prompt embeddings."""
    emb = [F.normalize(F.normalize(model.encode_text(tokenizer(p)), dim=-1).mean(0), dim=-1) for p in prompts]
    return torch.stack(emb)


@torch.no_grad()
def _image_features(model, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.cat([model.encode_image(images[i : i + 256]) for i in range(0, len(images), 256)]), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: torch.Tensor, objs: list[toy.ToyObject]) -> dict[str, float]:
    """Per-attribute zero-shot accuracy with :func:`toy.attribute_prompts` (prompt ensembles)."""
    model.eval()
    feats = _image_features(model, images)  # [N, D]
    acc = {}
    for attr in toy.ATTRIBUTES:
        prompts = toy.attribute_prompts(attr)
        values = list(prompts)
        pred = (feats @ _class_embeddings(model, tokenizer, [prompts[v] for v in values]).T).argmax(-1)  # [N]
        truth = torch.tensor([values.index(getattr(o, attr)) for o in objs])
        acc[attr] = round(float((pred == truth).float().mean()), 4)
    model.train()
    return acc


@torch.no_grad()
def kind_accuracy(model, tokenizer, images: torch.Tensor, objs: list[toy.ToyObject]) -> dict[str, float]:
    """8-way noun accuracy of kind scenes: the noun alone, with each image's true state, with the wrong state."""
    model.eval()
    feats = _image_features(model, images)  # [N, D]
    nouns = list(toy.KINDS)
    out = {}
    for name, state_of in (("name", None), ("true_state", lambda o: o.state),
                           ("wrong_state", lambda o: "dry" if o.state == "wet" else "wet")):
        if state_of is None:
            emb = _class_embeddings(model, tokenizer, [[f"a photo of a {n}."] for n in nouns])  # [8, D]
            pred = (feats @ emb.T).argmax(-1)
        else:
            by_state = {s: _class_embeddings(model, tokenizer, [[f"a photo of a {s} {n}."] for n in nouns])
                        for s in toy.STATES}
            pred = torch.stack([(f @ by_state[state_of(o)].T).argmax() for f, o in zip(feats, objs)])
        truth = torch.tensor([nouns.index(o.kind) for o in objs])
        out[name] = round(float((pred == truth).float().mean()), 4)
    model.train()
    return out


@torch.no_grad()
def word_sensitivity(model, tokenizer, start_block: int = 7, n: int = 200, seed: int = 779) -> float:
    """Mean 1 − cos between a caption's embedding and the same caption with one content word's tokens
    masked (weight 0) from ``start_block`` on — how much SToRI can move an embedding from that block."""
    from stori_pl.text.encoder import WeightedTextEncoder

    model.eval()
    rng = random.Random(seed)
    enc = WeightedTextEncoder(model, start_block=start_block)
    plain, dropped = [], []
    for _ in range(n):
        cap = toy.describe(toy.sample_object(rng, heldout=None, distractor=0.5, kind=0.35), rng)
        tokens, spans = tokenize_caption(tokenizer, cap)
        key = rng.choice(sorted(spans))
        lw = torch.zeros(1, tokens.shape[0])
        lw[0, spans[key]] = NEG
        plain.append(enc(tokens[None], None))
        dropped.append(enc(tokens[None], lw))
    cos = F.cosine_similarity(torch.cat(plain), torch.cat(dropped), dim=-1)
    model.train()
    return round(float((1 - cos).mean()), 5)


def tokenize_caption(tokenizer, cap: toy.Caption) -> tuple[torch.Tensor, dict[str, list[int]]]:
    """Tokens ``[L]`` of a caption (``[SOS] ... [EOT]``, padded to the context length) and, per claim, the token
    positions of its words. Word-by-word BPE equals open_clip's tokenization of the whole text (its pattern
    splits at spaces and punctuation)."""
    ids, starts = [tokenizer.sot_token_id], []
    for w in cap.words:
        starts.append(len(ids))
        ids.extend(tokenizer.encode(w))
    starts.append(len(ids))
    length = tokenizer.context_length
    ids = ids[: length - 1] + [tokenizer.eot_token_id]
    spans = {k: [t for i in idx for t in range(starts[i], starts[i + 1]) if t < len(ids) - 1] for k, idx in cap.spans.items()}
    out = torch.zeros(length, dtype=torch.long)
    out[: len(ids)] = torch.tensor(ids)
    return out, {k: v for k, v in spans.items() if v}


def encode_text_trimmed(model, tokens: torch.Tensor, drop: torch.Tensor | None = None,
                        drop_from: torch.Tensor | None = None) -> torch.Tensor:
    """``model.encode_text`` on tokens cut to ``max(EOT) + 1`` (same result under the causal mask, less work),
    optionally with some keys masked from a per-caption block on.

    Args:
        model: open_clip ``CLIP``.
        tokens: ``[B, L]`` token ids.
        drop: ``[B, L]`` bool, keys to mask (None: plain ``encode_text``).
        drop_from: ``[B]`` long, 0-indexed first block of each caption's masking (``len(blocks)``: never).

    Returns:
        ``[B, D]`` text features (unnormalized).
    """
    length = int(tokens.argmax(-1).max()) + 1
    tokens = tokens[:, :length]  # [B, L']
    x = model.token_embedding(tokens) + model.positional_embedding[:length]  # [B, L', W]
    causal = model.attn_mask[:length, :length]
    blocks = model.transformer.resblocks
    heads = blocks[0].attn.num_heads
    for i, block in enumerate(blocks):
        mask = causal
        if drop is not None:
            bias = torch.where(drop[:, :length] & (drop_from[:, None] <= i), NEG, 0.0)  # [B, L']
            mask = (causal[None] + bias[:, None, :]).repeat_interleave(heads, dim=0)  # [B*H, L', L']
        x = block(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(len(tokens)), tokens.argmax(-1)]  # [B, W] at EOT
    return x @ model.text_projection  # [B, D]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def save_weights(model: torch.nn.Module, path: Path) -> str:
    """Write fp16 safetensors of ``model.state_dict()`` atomically; returns its sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model": MODEL_NAME})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lr_at(cfg: ToyTrainConfig, step: int) -> float:
    """Learning rate of ``step``: linear warmup to ``cfg.lr`` over ``cfg.warmup`` steps, then cosine to 0."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


def contrastive_loss(model, images: torch.Tensor, tokens: torch.Tensor, match: torch.Tensor, bf16: bool,
                     drop: torch.Tensor | None = None, drop_from: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-positive CLIP loss: every caption an image satisfies is a positive (no false negatives).

    Args:
        model: open_clip model.
        images: ``[B, 3, H, W]`` normalized images.
        tokens: ``[B, L]`` caption tokens.
        match: ``[B, B]`` float, 1 where image ``i`` fits caption ``j``.
        bf16: CPU autocast to bfloat16 for the encoders.
        drop, drop_from: Late key masking of :func:`encode_text_trimmed`.

    Returns:
        Scalar loss (mean of the image→text and text→image terms).
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        img = F.normalize(model.encode_image(images).float(), dim=-1)  # [B, D]
        txt = F.normalize(encode_text_trimmed(model, tokens, drop, drop_from).float(), dim=-1)  # [B, D]
    logits = model.logit_scale.exp() * img @ txt.T  # [B, B]
    loss_i = -(F.log_softmax(logits, 1) * match / match.sum(1, keepdim=True).clamp_min(1)).sum(1).mean()
    loss_t = -(F.log_softmax(logits, 0) * match / match.sum(0, keepdim=True).clamp_min(1)).sum(0).mean()
    return (loss_i + loss_t) / 2


def training_batch(tokenizer, rng: random.Random, cfg: ToyTrainConfig, n_blocks: int):
    """A fresh batch: images ``[B, 3, H, W]``, tokens ``[B, L]``, match ``[B, B]``, drop ``[B, L]``, drop_from ``[B]``.

    A caption picked for late dropping (probability ``cfg.late_drop``) loses one claim, chosen at random, from a
    random block on; its row of the match matrix then ignores that claim."""
    images, captions, objs = toy.sample_batch(rng, cfg.batch_size, heldout=False, distractor=cfg.distractor,
                                              kind=cfg.kind, p_wrong=cfg.p_wrong)
    tokens, drop = [], torch.zeros(cfg.batch_size, tokenizer.context_length, dtype=torch.bool)
    drop_from = torch.full((cfg.batch_size,), n_blocks, dtype=torch.long)
    claims = []
    for i, cap in enumerate(captions):
        ids, spans = tokenize_caption(tokenizer, cap)
        tokens.append(ids)
        said = dict(cap.claims)
        if spans and rng.random() < cfg.late_drop:
            key = rng.choice(sorted(spans))
            drop[i, spans[key]] = True
            drop_from[i] = rng.randrange(n_blocks)
            said.pop(key, None)
        claims.append(said)
    match = torch.from_numpy(toy.consistent(objs, claims)).float()  # [B, B] image i fits caption j
    return to_tensor(images), torch.stack(tokens), match, drop, drop_from


def train_step(model, tokenizer, opt: torch.optim.Optimizer, rng: random.Random, cfg: ToyTrainConfig,
               step: int) -> float:
    """One optimizer step on a fresh batch drawn from ``rng``; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, step)
    images, tokens, match, drop, drop_from = training_batch(tokenizer, rng, cfg, len(model.transformer.resblocks))
    loss = contrastive_loss(model, images, tokens, match, cfg.bf16, drop, drop_from)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


def evaluate(model, tokenizer, eval_sets: dict) -> dict:
    """Held-out zero-shot per attribute, kind accuracy (name / true state / wrong state), block-7 sensitivity."""
    return {"zero_shot": zero_shot_accuracy(model, tokenizer, *eval_sets["heldout"]),
            "kinds": kind_accuracy(model, tokenizer, *eval_sets["kinds"]),
            "word_sensitivity_block7": word_sensitivity(model, tokenizer, start_block=7)}


def train(cfg: ToyTrainConfig, out: str | Path, log=print) -> dict:
    """Pre-train `stori-toy` and write ``<out>.safetensors`` + ``<out>.json``.

    Args:
        cfg: Run settings.
        out: Output path stem (``.safetensors`` / ``.json`` are appended).
        log: Line logger.

    Returns:
        The provenance dictionary that was written.
    """
    import open_clip

    register_model_configs()  # stori-toy's architecture, for open_clip.create_model
    out = Path(out)
    weights_path, meta_path = out.with_suffix(".safetensors"), out.with_suffix(".json")
    partial_path = weights_path.with_suffix(".partial.safetensors")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(MODEL_NAME)  # random init (the warning is expected)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    rng = random.Random(cfg.seed)
    eval_sets = {"heldout": heldout_eval_set(cfg.eval_images), "kinds": kind_eval_set(cfg.eval_images // 2)}
    history: list[dict] = []
    start = time.time()
    for step in range(cfg.steps):
        loss = train_step(model, tokenizer, opt, rng, cfg, step)
        if step % 10 == 0:
            log(f"step {step}/{cfg.steps} loss {loss:.4f} lr {lr_at(cfg, step):.2e} "
                f"scale {model.logit_scale.exp().item():.1f} elapsed {time.time() - start:.0f}s")
        last = step == cfg.steps - 1
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last:
            history.append({"step": step + 1, "elapsed_s": round(time.time() - start, 1),
                            **evaluate(model, tokenizer, eval_sets)})
            log(f"eval step {step + 1}: {json.dumps(history[-1])}")
            save_weights(model, weights_path if last else partial_path)
    wall = time.time() - start
    partial_path.unlink(missing_ok=True)
    meta = provenance(cfg, wall, history, hashlib.sha256(weights_path.read_bytes()).hexdigest())
    write_json(meta_path, meta)
    return meta


def provenance(cfg: ToyTrainConfig, wall: float, history: list[dict], sha: str) -> dict:
    """The JSON written next to the weights: command, settings, wall time, held-out accuracies, versions."""
    import open_clip

    return {
        "model": MODEL_NAME,
        "command": "stori toy-pretrain " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["toy-pretrain"] else sys.argv[1:]),
        "config": asdict(cfg),
        "wall_time_s": round(wall, 1),
        "world_version": toy.WORLD_VERSION,
        "zero_shot_heldout": history[-1]["zero_shot"],
        "zero_shot_eval": f"{cfg.eval_images} images of the held-out (shape, color, pattern) triples, seed 777",
        "kinds": history[-1]["kinds"],
        "kinds_eval": f"{cfg.eval_images // 2} scenes with a kind's look, seed 778 (8-way noun accuracy)",
        "word_sensitivity_block7": history[-1]["word_sensitivity_block7"],
        "heldout_triples": sorted(map(list, toy.HELDOUT)),
        "history": history,
        "weights_sha256": sha,
        "dtype": "float16",
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version()},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
