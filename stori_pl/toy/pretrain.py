"""Contrastive pre-training of the tiny `stori-toy` CLIP on the procedural toy world (pure torch).

Run through ``stori toy-pretrain`` (see :mod:`stori_pl.cli.toy_pretrain`). Fresh images and captions are
drawn every step from :mod:`stori_pl.toy.data`, so there is no dataset on disk. Reproducible from the seed
(up to CPU kernel non-determinism across machines). Outputs: fp16 safetensors of ``model.state_dict()`` and a
provenance JSON (command, settings, wall time, held-out zero-shot accuracies).
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

from stori_pl.toy import world as toy
from stori_pl.utils import atomic_path, write_json

MODEL_NAME = "stori-toy"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OpenAI normalization (the model's preprocess)
STD = (0.26862954, 0.26130258, 0.27577711)


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
        eval_every: Steps between held-out zero-shot evaluations / checkpoints (0: only at the end).
        eval_images: Held-out images used for the zero-shot accuracies.
    """

    steps: int = 700
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 40
    weight_decay: float = 0.1
    seed: int = 0
    threads: int = 1
    bf16: bool = True
    eval_every: int = 100
    eval_images: int = 1000
    extra: dict = field(default_factory=dict)


def register_config() -> None:
    """Register every JSON in ``stori_pl/model_configs`` with open_clip (idempotent)."""
    import open_clip

    for path in sorted(CONFIG_DIR.glob("*.json")):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 → [N, 3, H, W] float normalized like the model's preprocess."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)  # [N, 3, H, W]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def heldout_eval_set(n: int, seed: int = 777) -> tuple[torch.Tensor, list[toy.ToyObject]]:
    """``n`` images of held-out (shape, color, pattern) triples, fixed by ``seed``."""
    rng = random.Random(seed)
    objs = [toy.sample_object(rng, heldout=True) for _ in range(n)]
    return to_tensor(np.stack([toy.render(o, rng) for o in objs])), objs


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: torch.Tensor, objs: list[toy.ToyObject]) -> dict[str, float]:
    """Per-attribute zero-shot accuracy with :func:`toy.attribute_prompts` (prompt ensembles)."""
    model.eval()
    feats = torch.cat([model.encode_image(images[i : i + 256]) for i in range(0, len(images), 256)])
    feats = F.normalize(feats, dim=-1)  # [N, D]
    acc = {}
    for attr in toy.ATTRIBUTES:
        prompts = toy.attribute_prompts(attr)
        values = list(prompts)
        emb = []
        for v in values:
            e = F.normalize(model.encode_text(tokenizer(prompts[v])), dim=-1).mean(0)  # [D]
            emb.append(F.normalize(e, dim=-1))
        pred = (feats @ torch.stack(emb).T).argmax(-1)  # [N]
        truth = torch.tensor([values.index(getattr(o, attr)) for o in objs])
        acc[attr] = round(float((pred == truth).float().mean()), 4)
    model.train()
    return acc


def encode_text_trimmed(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on tokens cut to ``max(EOT) + 1`` (same result under the causal mask, less work)."""
    length = int(tokens.argmax(-1).max()) + 1
    tokens = tokens[:, :length]  # [B, L']
    x = model.token_embedding(tokens) + model.positional_embedding[:length]  # [B, L', W]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
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


def contrastive_loss(model, images: torch.Tensor, tokens: torch.Tensor, match: torch.Tensor,
                     bf16: bool) -> torch.Tensor:
    """Multi-positive CLIP loss: every caption an image satisfies is a positive (no false negatives).

    Args:
        model: open_clip model.
        images: ``[B, 3, H, W]`` normalized images.
        tokens: ``[B, L]`` caption tokens.
        match: ``[B, B]`` float, 1 where image ``i`` fits caption ``j``.
        bf16: CPU autocast to bfloat16 for the encoders.

    Returns:
        Scalar loss (mean of the image→text and text→image terms).
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        img = F.normalize(model.encode_image(images).float(), dim=-1)  # [B, D]
        txt = F.normalize(encode_text_trimmed(model, tokens).float(), dim=-1)  # [B, D]
    logits = model.logit_scale.exp() * img @ txt.T  # [B, B]
    loss_i = -(F.log_softmax(logits, 1) * match / match.sum(1, keepdim=True)).sum(1).mean()
    loss_t = -(F.log_softmax(logits, 0) * match / match.sum(0, keepdim=True)).sum(0).mean()
    return (loss_i + loss_t) / 2


def train_step(model, tokenizer, opt: torch.optim.Optimizer, rng: random.Random, cfg: ToyTrainConfig,
               step: int) -> float:
    """One optimizer step on a fresh batch drawn from ``rng``; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, step)
    images, captions, objs, mentions = toy.sample_batch(rng, cfg.batch_size, heldout=False)
    match = torch.from_numpy(toy.consistent(objs, objs, mentions)).float()  # [B, B] image i fits caption j
    loss = contrastive_loss(model, to_tensor(images), tokenizer(captions), match, cfg.bf16)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item()


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

    register_config()
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
    eval_x, eval_objs = heldout_eval_set(cfg.eval_images)
    history: list[dict] = []
    start = time.time()
    for step in range(cfg.steps):
        loss = train_step(model, tokenizer, opt, rng, cfg, step)
        if step % 10 == 0:
            log(f"step {step}/{cfg.steps} loss {loss:.4f} lr {lr_at(cfg, step):.2e} "
                f"scale {model.logit_scale.exp().item():.1f} elapsed {time.time() - start:.0f}s")
        last = step == cfg.steps - 1
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last:
            acc = zero_shot_accuracy(model, tokenizer, eval_x, eval_objs)
            history.append({"step": step + 1, "elapsed_s": round(time.time() - start, 1), "zero_shot": acc})
            log(f"eval step {step + 1}: {json.dumps(acc)}")
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
        "zero_shot_heldout": history[-1]["zero_shot"],
        "zero_shot_eval": f"{cfg.eval_images} images of the held-out (shape, color, pattern) triples, seed 777",
        "heldout_triples": sorted(map(list, toy.HELDOUT)),
        "history": history,
        "weights_sha256": sha,
        "dtype": "float16",
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version()},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
