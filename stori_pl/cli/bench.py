"""Speed and memory of the SToRI encoder's fast paths, as ratios measured in one run.

(a) training step (forward + backward to the log-weights over all prompts): fast path vs naive
    (all blocks, 77 tokens);
(b) ``WeightedTextEncoder`` inference vs ``encode_text`` on the same prompts;
(c) peak memory of the chunked (gradient-caching) step at N_large vs N_small prompts
    (each measured in a fresh subprocess);
(d) achieved FLOP/s of the fast training step as a fraction of a plain GEMM's FLOP/s;
(e) a CoOp training step (forward + backward to the context vectors, one prompt per class): the encoder's
    EOT cut and length buckets vs the same step on all 77 positions (the official code's path);
(f) an IntCoOp training step (B × C instance prompts, the three losses, backward to every trained part) vs a CoOp
    step (C prompts) at the same batch of B image features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from stori_pl.data.containers import PromptSet
from stori_pl.models.coop import CoOp
from stori_pl.models.intcoop import IntCoOp
from stori_pl.text.clip import load_clip, tokenize
from stori_pl.text.encoder import WeightedTextEncoder


DTD_CUPL = Path(__file__).resolve().parents[3] / "shared/data/cupl/full_prompts/texture_prompts_full.json"


def load_prompts(path: str | None, n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` prompts: from a CuPL JSON (cycled), else generated sentences of CuPL-like length."""
    source = Path(path) if path else DTD_CUPL
    if source.is_file():
        prompts = [p for ps in json.loads(source.read_text()).values() for p in ps]
        name = str(source)
    else:
        g = torch.Generator().manual_seed(seed)
        words = "a texture pattern with striped dotted red smooth rough surface of lines and small bands".split()
        prompts = [" ".join(words[i] for i in torch.randint(len(words), (int(n_),), generator=g)) + "."
                   for n_ in torch.randint(6, 24, (max(n, 1),), generator=g)]
        name = "generated sentences (6-24 words)"
    return [prompts[i % len(prompts)] for i in range(n)], name


def _timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def naive_encode(enc, tokens: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """The straightforward SToRI forward: every block, all 77 positions, full last block."""
    tower = enc.tower
    key_bias = torch.where(enc.token_mask(tokens), log_weights, 0.0)
    x = enc.run_blocks(enc.embed_tokens(tokens), tower.blocks[: enc.start_block - 1], tower.causal_mask)
    x = enc.run_blocks(x, tower.blocks[enc.start_block - 1 :], enc.weighted_mask(key_bias))
    x = tower.ln_final(x)  # [B, L, W]
    return tower.project(x[torch.arange(len(x)), enc.pool_positions(tokens)])


def _loss(emb: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(emb, dim=-1).sum()


def _memory_child(args: dict) -> None:
    """Subprocess body for (c): one chunked training step; prints peak RSS figures as JSON."""
    torch.set_num_threads(args["threads"])
    model, _, tok = load_clip(args["model"], args["pretrained"])
    prompts, _ = load_prompts(args["prompts"], args["n"])
    enc = WeightedTextEncoder(model, args["start_block"])
    prep = enc.prepare(tok(prompts), bucket_size=args["chunk_size"])
    lw = torch.zeros(len(prompts), prep.length, requires_grad=True)
    before = _rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux)
    _loss(prep.encode(lw, chunk_size=args["chunk_size"])).backward()
    print(json.dumps({"before_mb": before, "peak_mb": _rss_mb("VmHWM")}))


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _memory(n: int, model: str, pretrained: str | None, prompts: str | None, start_block: int,
            chunk_size: int) -> dict:
    payload = json.dumps({"model": model, "pretrained": pretrained, "prompts": prompts, "n": n,
                          "start_block": start_block, "chunk_size": chunk_size, "threads": torch.get_num_threads()})
    code = f"from stori_pl.cli.bench import _memory_child; import json; _memory_child(json.loads({payload!r}))"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(model: str = "ViT-B-32", pretrained: str | None = None, start_block: int = 7, prompts: str | None = None,
          n_prompts: int = 256, memory_prompts: tuple[int, int] = (1000, 10000), chunk_size: int = 256,
          repeats: int = 3, skip_memory: bool = False, device: str | None = None, coop_classes: int = 100,
          intcoop_batch: int = 4) -> int:
    """Measure (a)-(d) and print a table of raw figures and ratios.

    Args:
        model: open_clip architecture (random weights unless --pretrained; speed does not depend on them).
        pretrained: open_clip tag or local checkpoint file (null: random weights).
        start_block: First reweighted block (1-indexed).
        prompts: CuPL JSON to take prompts from (default: the DTD CuPL file if present, else generated sentences).
        n_prompts: Prompts for (a), (b) and (d).
        memory_prompts: The small and the large prompt count of (c), e.g. '[1000, 10000]'.
        chunk_size: Prompts per chunk of the gradient-caching step (c), and per encode_text call in (b).
        repeats: Timed repeats (the best is reported) after one warm-up.
        skip_memory: Skip (c) (two subprocesses).
        device: Torch device (default: cuda when available, else cpu).
        coop_classes: Classes of the CoOp step (e) and of the IntCoOp comparison (f); 0 skips both.
        intcoop_batch: Image features per step in (f); 0 skips it.

    Returns:
        Exit status 0.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    clip, _, tok = load_clip(model, pretrained, device=device)
    texts, source = load_prompts(prompts, n_prompts)
    tokens = tok(texts).to(device)  # [P, 77]
    enc = WeightedTextEncoder(clip, start_block)
    print(f"model {model} ({pretrained or 'random init'}), start block {start_block}/{enc.n_layers}, "
          f"{len(texts)} prompts from {source}, device {device}, torch threads {torch.get_num_threads()}")
    if not enc.tower.causal:
        print(f"bidirectional text tower ({enc.tower.pool_type} pooling): no EOT cut, every position reaches the "
              "pooled one, so (a) and (e) gain from the prefix cache and the one-row last block only")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    prep = enc.prepare(tokens)  # length buckets of the default size
    times = {"prepare": time.perf_counter() - t0, **time_encoders(enc, prep, tokens, chunk_size, repeats, sync)}
    rows = speed_rows(times, flop_rates(prep, tokens, times["fast"], repeats, sync))
    if coop_classes:
        rows += coop_rows(time_coop(model, pretrained, coop_classes, device, repeats, sync))
    if coop_classes and intcoop_batch:
        rows += intcoop_rows(time_intcoop(model, pretrained, coop_classes, intcoop_batch, device, repeats, sync))
    if not skip_memory:
        small, large = (_memory(n, model, pretrained, prompts, start_block, chunk_size) for n in memory_prompts)
        rows += memory_rows(memory_prompts, small, large)
    print(format_rows(rows))
    return 0


def time_encoders(enc, prep, tokens: torch.Tensor, chunk_size: int, repeats: int, sync) -> dict[str, float]:
    """Best-of-``repeats`` seconds: ``naive`` / ``fast`` training steps, ``ours`` / ``ref`` inference.

    Args:
        enc: ``WeightedTextEncoder``.
        prep: ``enc.prepare(tokens)`` (the fast path's prefix cache).
        tokens: Token ids ``[P, 77]`` on the encoder's device.
        chunk_size: Prompts per ``encode_text`` call (the reference of (b)).
        repeats: Timed repeats after one warm-up.
        sync: Device synchronization (``torch.cuda.synchronize`` or a no-op).
    """
    out = {}
    lw = torch.zeros(tokens.shape, device=tokens.device, requires_grad=True)  # [P, 77]

    def step(fn):
        def run():
            _loss(fn(lw)).backward()
            lw.grad = None
            sync()
        return run

    out["naive"] = _timeit(step(lambda w: naive_encode(enc, tokens, w)), repeats)
    out["fast"] = _timeit(step(lambda w: prep.encode(w)), repeats)
    with torch.no_grad():
        def ours():
            enc(tokens, lw.detach())
            sync()

        def ref():
            for i in range(0, len(tokens), chunk_size):
                enc.model.encode_text(tokens[i : i + chunk_size])
            sync()

        out["ours"], out["ref"] = _timeit(ours, repeats), _timeit(ref, repeats)
    return out


def flop_rates(prep, tokens: torch.Tensor, t_fast: float, repeats: int, sync) -> tuple[float, float]:
    """(d): matmul FLOP/s of the fast training step (its FLOPs / ``t_fast``) and of a plain 2048³ GEMM."""
    lw = torch.zeros(tokens.shape, device=tokens.device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        _loss(prep.encode(lw)).backward()
    a = torch.randn(2048, 2048, device=tokens.device)
    t_gemm = _timeit(lambda: (a @ a, sync()), repeats)
    return counter.get_total_flops() / t_fast, 2 * 2048**3 / t_gemm


def speed_rows(t: dict[str, float], flops: tuple[float, float]) -> list[tuple[str, str, str]]:
    """Table rows ``(figure, raw, ratio)`` of (a), (b), (d); every ratio is computed from the raw figures shown."""
    step, gemm = flops
    return [
        ("(a) train step, naive (all blocks, 77 tokens)", f"{t['naive']:.4g} s", ""),
        ("(a) train step, fast path (prefix cache, cut after EOT)", f"{t['fast']:.4g} s",
         f"{t['naive'] / t['fast']:.2f}x faster (target >= 8x)"),
        ("    one-off prepare (blocks before k)", f"{t['prepare']:.4g} s", ""),
        ("(b) encode_text", f"{t['ref']:.4g} s", ""),
        ("(b) WeightedTextEncoder inference", f"{t['ours']:.4g} s", f"{t['ours'] / t['ref']:.3f}x the time (target <= 0.5x)"),
        ("(d) fast train step, matmul FLOP/s", f"{step / 1e9:.4g} GFLOP/s", f"{100 * step / gemm:.1f}% of GEMM"),
        ("(d) plain 2048^3 GEMM", f"{gemm / 1e9:.4g} GFLOP/s", ""),
    ]


def memory_rows(counts: tuple[int, int], small: dict, large: dict) -> list[tuple[str, str, str]]:
    """Table rows of (c) from the two subprocesses' ``{"before_mb", "peak_mb"}``."""
    return [
        (f"(c) chunked step peak RSS, {counts[0]} prompts", f"{small['peak_mb']:.1f} MB",
         f"step adds {small['peak_mb'] - small['before_mb']:.1f} MB"),
        (f"(c) chunked step peak RSS, {counts[1]} prompts", f"{large['peak_mb']:.1f} MB",
         f"step adds {large['peak_mb'] - large['before_mb']:.1f} MB"),
        ("(c) ratio large / small (peak RSS)", "", f"{large['peak_mb'] / small['peak_mb']:.3f}x (target <= 2x)"),
    ]


def format_rows(rows: list[tuple[str, str, str]]) -> str:
    """Aligned text table: figure, raw value (right-aligned), ratio."""
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {raw:>16}  {ratio}".rstrip() for name, raw, ratio in rows)


def class_names(n: int) -> list[str]:
    """``n`` class names: DTD's (cycled, numbered past 47) when the CuPL file is present, else generated."""
    names = list(json.loads(DTD_CUPL.read_text())) if DTD_CUPL.is_file() else ["pattern", "striped fabric", "stone"]
    return [names[i % len(names)] + ("" if i < len(names) else f" {i // len(names)}") for i in range(n)]


def naive_coop_encode(model) -> torch.Tensor:
    """CoOp's text features the way the official code runs them: all 77 positions, every block in full."""
    enc = model.encoder
    tokens = tokenize([f"{' '.join(['X'] * len(model.ctx))} {n}." for n in model.classnames], model.tokenizer)
    tokens = tokens.to(model.ctx.device)  # [C, 77]
    with torch.no_grad():
        emb = enc.tower.token_embedding(tokens).float()  # [C, 77, W]
    ctx = model.ctx.unsqueeze(0).expand(len(tokens), -1, -1)
    lead = enc.n_leading(tokens)  # SOS or nothing (SigLIP)
    x = torch.cat([emb[:, :lead], ctx, emb[:, lead + len(model.ctx):]], dim=1)
    x = enc.run_blocks(enc.embed_tokens(tokens, x), enc.tower.blocks, enc.plain_mask(tokens.shape[1]))
    x = enc.tower.ln_final(x)
    return enc.tower.project(x[torch.arange(len(x)), enc.pool_positions(tokens)])  # [C, D]


def time_coop(model: str, pretrained: str | None, n_classes: int, device: str, repeats: int, sync) -> dict:
    """(e): best-of-``repeats`` seconds of one CoOp step, ours (EOT cut, buckets) vs all 77 positions."""
    names = class_names(n_classes)
    prompts = PromptSet(names, [[f"a photo of a {n}."] for n in names], [[] for _ in names])
    coop = CoOp(model, pretrained, prompts=prompts.to_dict()).to(device)

    def step(fn):
        def run():
            _loss(fn()).backward()
            coop.ctx.grad = None
            sync()
        return run

    return {"classes": n_classes, "coop_fast": _timeit(step(coop.class_embeddings), repeats),
            "coop_naive": _timeit(step(lambda: naive_coop_encode(coop)), repeats)}


def coop_rows(t: dict) -> list[tuple[str, str, str]]:
    """Table rows of (e)."""
    return [
        (f"(e) CoOp train step, {t['classes']} classes, 77 positions", f"{t['coop_naive']:.4g} s", ""),
        (f"(e) CoOp train step, {t['classes']} classes, EOT cut + buckets", f"{t['coop_fast']:.4g} s",
         f"{t['coop_naive'] / t['coop_fast']:.2f}x faster"),
    ]


def time_intcoop(model: str, pretrained: str | None, n_classes: int, batch: int, device: str, repeats: int,
                 sync) -> dict:
    """(f): best-of-``repeats`` seconds of one training step (forward, loss, backward) at the same batch of
    ``batch`` random image features: IntCoOp (``batch × n_classes`` prompts, CE + attribute + regularizer losses)
    vs CoOp (``n_classes`` prompts, CE), both with 4 context vectors from "a photo of a"."""
    names = class_names(n_classes)
    prompts = PromptSet(names, [[f"a photo of a {n}."] for n in names], [[] for _ in names]).to_dict()
    words = ["red", "small", "striped", "wooden"]
    intcoop = IntCoOp(model, pretrained, attribute_words=words, prompts=prompts).to(device)
    coop = CoOp(model, pretrained, ctx_init="a photo of a", prompts=prompts).to(device)
    g = torch.Generator().manual_seed(0)
    dim = intcoop.encoder.tower.project(torch.zeros(1, intcoop.ctx.shape[1], device=device)).shape[-1]
    feats = torch.randn(batch, dim, generator=g).to(device)
    batch_dict = {"features": feats, "label": torch.randint(n_classes, (batch,), generator=g).to(device),
                  "attribute": torch.randint(len(words), (batch,), generator=g).to(device)}
    intcoop.handcrafted_text(batch_dict["attribute"], batch_dict["label"])  # the one-off cache, not per step

    def step(module, loss_fn):
        def run():
            loss_fn().backward()
            module.zero_grad(set_to_none=True)
            sync()
        return run

    coop_loss = lambda: torch.nn.functional.cross_entropy(coop(feats), batch_dict["label"])  # noqa: E731
    return {"classes": n_classes, "batch": batch,
            "intcoop": _timeit(step(intcoop, lambda: intcoop.losses(batch_dict)[2]), repeats),
            "coop": _timeit(step(coop, coop_loss), repeats)}


def intcoop_rows(t: dict) -> list[tuple[str, str, str]]:
    """Table rows of (f)."""
    return [
        (f"(f) CoOp train step, {t['classes']} classes, batch {t['batch']}", f"{t['coop']:.4g} s", ""),
        (f"(f) IntCoOp train step, {t['classes']} classes x batch {t['batch']} prompts", f"{t['intcoop']:.4g} s",
         f"{t['intcoop'] / t['coop']:.2f}x the CoOp step"),
    ]
