"""``stori bench``: speed and memory of the SToRI encoder, as ratios measured in one run.

(a) training step (forward + backward to the log-weights over all prompts): fast path vs naive
    (all blocks, 77 tokens);
(b) ``WeightedTextEncoder`` inference vs ``encode_text`` on the same prompts;
(c) peak memory of the chunked (gradient-caching) step at N_large vs N_small prompts
    (each measured in a fresh subprocess);
(d) achieved FLOP/s of the fast training step as a fraction of a plain GEMM's FLOP/s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from torch.utils.flop_counter import FlopCounterMode

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
    return tower.project(x[torch.arange(len(x)), enc.eot_positions(tokens)])


def _loss(emb: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(emb, dim=-1).sum()


def _memory_child(args: dict) -> None:
    """Subprocess body for (c): one chunked training step; prints peak RSS figures as JSON."""
    from stori_pl import WeightedTextEncoder, load_clip

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


def _memory(n: int, args) -> dict:
    payload = json.dumps({"model": args.model, "pretrained": args.pretrained, "prompts": args.prompts, "n": n,
                          "start_block": args.start_block, "chunk_size": args.chunk_size, "threads": torch.get_num_threads()})
    code = f"from stori_pl.cli.bench import _memory_child; import json; _memory_child(json.loads({payload!r}))"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table of raw figures and ratios."""
    from stori_pl import WeightedTextEncoder, load_clip

    p = ArgumentParser(prog="stori bench", description=__doc__)
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random init unless --pretrained)")
    p.add_argument("--pretrained", type=str | None, default=None)
    p.add_argument("--start_block", "--start-block", type=int, default=7)
    p.add_argument("--prompts", type=str | None, default=None, help="CuPL JSON (default: DTD CuPL if present)")
    p.add_argument("--n_prompts", "--n-prompts", type=int, default=256, help="prompts for (a), (b), (d)")
    p.add_argument("--memory_prompts", "--memory-prompts", type=list[int], default=[1000, 10000])
    p.add_argument("--chunk_size", "--chunk-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip_memory", "--skip-memory", type=bool, default=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

    model, _, tok = load_clip(args.model, args.pretrained, device=args.device)
    prompts, source = load_prompts(args.prompts, args.n_prompts)
    tokens = tok(prompts).to(args.device)  # [P, 77]
    enc = WeightedTextEncoder(model, args.start_block)
    print(f"model {args.model} ({args.pretrained or 'random init'}), start block {args.start_block}/{enc.n_layers}, "
          f"{len(prompts)} prompts from {source}, device {args.device}, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    prep = enc.prepare(tokens)  # length buckets of the default size
    t_prepare = time.perf_counter() - t0
    lw = torch.zeros(tokens.shape, device=args.device, requires_grad=True)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def step(fn):
        def run():
            _loss(fn(lw)).backward()
            lw.grad = None
            sync()
        return run

    t_naive = _timeit(step(lambda w: naive_encode(enc, tokens, w)), args.repeats)
    t_fast = _timeit(step(lambda w: prep.encode(w)), args.repeats)
    with torch.no_grad():
        def ours():
            enc(tokens, lw.detach())
            sync()

        def ref():
            for i in range(0, len(tokens), args.chunk_size):
                model.encode_text(tokens[i : i + args.chunk_size])
            sync()

        t_ours, t_ref = _timeit(ours, args.repeats), _timeit(ref, args.repeats)

    with FlopCounterMode(display=False) as counter:
        _loss(prep.encode(lw)).backward()
    flops = counter.get_total_flops()
    a = torch.randn(2048, 2048, device=args.device)
    t_gemm = _timeit(lambda: (a @ a, sync()), args.repeats)
    gemm_flops = 2 * 2048**3 / t_gemm

    rows = [
        ("(a) train step, naive (all blocks, 77 tokens)", f"{t_naive:.3f} s", ""),
        ("(a) train step, fast path (prefix cache, cut after EOT)", f"{t_fast:.3f} s", f"{t_naive / t_fast:.1f}x faster (target >= 8x)"),
        ("    one-off prepare (blocks before k)", f"{t_prepare:.3f} s", ""),
        ("(b) encode_text", f"{t_ref:.3f} s", ""),
        ("(b) WeightedTextEncoder inference", f"{t_ours:.3f} s", f"{t_ours / t_ref:.2f}x the time (target <= 0.5x)"),
        ("(d) fast train step, matmul FLOP/s", f"{flops / t_fast / 1e9:.1f} GFLOP/s", f"{flops / t_fast / gemm_flops:.0%} of GEMM"),
        ("(d) plain 2048^3 GEMM", f"{gemm_flops / 1e9:.1f} GFLOP/s", ""),
    ]
    if not args.skip_memory:
        small, large = (_memory(n, args) for n in args.memory_prompts)
        rows += [
            (f"(c) chunked step peak RSS, {args.memory_prompts[0]} prompts", f"{small['peak_mb']:.0f} MB", f"step adds {small['peak_mb'] - small['before_mb']:.0f} MB"),
            (f"(c) chunked step peak RSS, {args.memory_prompts[1]} prompts", f"{large['peak_mb']:.0f} MB", f"step adds {large['peak_mb'] - large['before_mb']:.0f} MB"),
            ("(c) ratio large / small (peak RSS)", "", f"{large['peak_mb'] / small['peak_mb']:.2f}x (target <= 2x)"),
        ]
    width = max(len(r[0]) for r in rows)
    for name, raw, ratio in rows:
        print(f"{name:<{width}}  {raw:>16}  {ratio}")
    return 0
