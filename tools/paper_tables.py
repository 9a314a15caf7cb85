"""The paper's Tables 1 and 3 reproduced in kind on the toy world, over several seeds (docs/few_shot.md,
docs/retrieval.md). Table 2 is ``stori grid`` + ``stori report --paired_to SToRI`` (docs/baselines.md).

    python tools/paper_tables.py table1 --seeds 1 2 3 4 5 [--benchmark toy_shapes|toy_kinds] [--names given|opaque]
                                        [--out table1.json]
    python tools/paper_tables.py table3 --seeds 0 1 2 3 4 [--out table3.json]

``table1`` — what the weights are learned on (SToRI Table 1): few-shot SToRI at the demo's settings
(``configs/demo.yaml``: start block 7, lr 0.4, function words kept at 1, 16 shots; the weights after the last of its
30 epochs are tested) on ToyShapes (48 classes whose names hold every attribute) or ToyKinds (8 nouns that only a
state word resolves) with three prompt sets per class:

- ``descriptions``: the benchmark's CuPL-style sentences plus the template (the demo);
- ``templates``: the template ``a photo of a {class}.`` alone;
- ``nonsense``: the template, and per description the template followed by as many meaningless tokens as the
  description has words (as many prompts and weights as ``descriptions``, none of their meaning).

``--names opaque`` replaces the class name in every template by a made-up word (:func:`opaque_names`) and turns the
model's base prompts off (they would name the real class): then only the descriptions say what a class looks like.

Per seed (the few-shot sampling and training seed) the three test accuracies and their paired differences; the
summary gives mean ± sd and the paired 95 % t interval of ``descriptions − templates`` and ``nonsense − templates``.

``table3`` — user emphasis (SToRI Table 3 and the weight sweep): the preference-retrieval protocol of
docs/retrieval.md at start block 7 on a fresh toy attribute pool per seed; per weight of the target attribute, ΔAP
and ΔP@80 from the plain prompt (mean over the 30 task × attribute cases) and the share of cases in the expected
direction; the summary gives mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from stori_pl.lightning.results import paired_interval  # noqa: E402
from stori_pl.toy import data as toy_data  # noqa: E402

PROMPT_SETS = ("descriptions", "templates", "nonsense")
# Letter strings that name nothing in the toy world's captions (each is one or two BPE tokens).
NONSENSE_WORDS = ("sks", "pll", "ucd", "vrt", "zmq", "kpt", "blf", "drx", "qwo", "fnu", "gzt", "hju", "wxv", "tpz")
SWEEP = (0.0, 0.5, 1.5, 2.0, 3.0)
BENCHMARKS = {"toy_shapes": toy_data.SHAPES_SPEC, "toy_kinds": toy_data.KINDS_SPEC}


# Syllables of the made-up class names of ``--names opaque`` (none is a word of the toy world's captions).
SYLLABLES = ("bo", "ka", "ze", "mu", "ti", "ro", "fe", "nu", "pa", "vi", "lo", "gu", "sa", "di", "ke", "wu")


def opaque_names(classes: list[str], seed: int = 0) -> dict[str, str]:
    """A distinct made-up three-syllable word per class (``"kazemu"``): a name the CLIP has never read, so only
    the descriptions say what the class looks like (the case of a real CuPL class name CLIP barely knows)."""
    rng = random.Random(seed)
    names: dict[str, str] = {}
    while len(names) < len(classes):
        word = "".join(rng.choice(SYLLABLES) for _ in range(3))
        if word not in names.values():
            names[classes[len(names)]] = word
    return names


def prompt_sets(benchmark: str = "toy_shapes", seed: int = 0, names: str = "given") -> dict[str, dict[str, list[str]]]:
    """``{set name: {class: [prompt, ...]}}`` of Table 1 (``descriptions`` is the benchmark's own CuPL file).

    ``names="given"``: the template names the class (``a photo of a striped red circle.``) and is added by the
    model as its fixed base prompt (so it is not repeated here); ``"opaque"``: the template names the class by
    :func:`opaque_names` and is every set's first, learnable, prompt (the model's base prompts, which would name
    the real class, are off).
    """
    cupl = toy_data.toy_cupl(spec=BENCHMARKS[benchmark])
    rng = random.Random(seed)
    call = {c: c for c in cupl} if names == "given" else opaque_names(list(cupl), seed)
    head = {c: [] if names == "given" else [f"a photo of a {call[c]}."] for c in cupl}
    nonsense = {c: head[c] + [f"a photo of a {call[c]}, " + " ".join(rng.choice(NONSENSE_WORDS) for _ in s.split()) + "."
                              for s in sents] for c, sents in cupl.items()}
    return {"descriptions": {c: head[c] + sents for c, sents in cupl.items()},
            "templates": {c: [f"a photo of a {call[c]}."] for c in cupl}, "nonsense": nonsense}


def fit_toy_stori(root: Path, benchmark: str, name: str, prompts: dict[str, list[str]] | None,
                  use_base_prompts: bool, seed: int) -> float:
    """Test accuracy of SToRI at the demo's settings on ``benchmark`` (toy_shapes, toy_kinds) with ``prompts``
    (None: the benchmark's CuPL sentences), the weights after the last epoch (:func:`explain_sweep.fit_demo`)."""
    import explain_sweep

    cupl = None
    if prompts is not None:
        cupl = root / f"prompts_{benchmark}_{name}.json"
        cupl.write_text(json.dumps(prompts), encoding="utf-8")
    datamodule = {"toy_shapes": "ToyShapes", "toy_kinds": "ToyKinds"}[benchmark]
    return explain_sweep.fit_demo(seed, str(root), {"use_base_prompts": use_base_prompts}, datamodule=datamodule,
                                  data_overrides={"cupl": None if cupl is None else str(cupl)})[-1]


def table1_seed(root: Path, benchmark: str, seed: int, names: str = "given") -> dict:
    """Test accuracies of the three prompt sets for one few-shot seed (``names``: see :func:`prompt_sets`)."""
    sets = prompt_sets(benchmark, names=names)
    given = names == "given"
    return {"seed": seed, "benchmark": benchmark, "names": names,
            "descriptions": fit_toy_stori(root, benchmark, "descriptions", None if given else sets["descriptions"],
                                          given, seed),
            "templates": fit_toy_stori(root, benchmark, "templates", sets["templates"], False, seed),
            "nonsense": fit_toy_stori(root, benchmark, "nonsense", sets["nonsense"], given, seed)}


def table1_summary(runs: list[dict]) -> dict:
    """Mean ± sd (points) per prompt set and paired 95 % intervals of the differences to ``templates``."""
    out = {}
    for name in PROMPT_SETS:
        xs = [100 * r[name] for r in runs]
        out[name] = {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}
    for name in ("descriptions", "nonsense"):
        mean, low, high = paired_interval([100 * (r[name] - r["templates"]) for r in runs])
        out[f"{name}_minus_templates"] = {"mean": mean, "ci95": [low, high]}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", choices=("table1", "table3"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--benchmark", choices=tuple(BENCHMARKS), default="toy_shapes", help="table1: the benchmark")
    p.add_argument("--names", choices=("given", "opaque"), default="given",
                   help="table1: class names in the templates (opaque: made-up words, only the descriptions describe)")
    p.add_argument("--weights", type=float, nargs="+", default=list(SWEEP), help="table3: weights of the attribute")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            if args.table == "table1":
                runs.append(table1_seed(root, args.benchmark, seed, args.names))
            else:
                import toy_instruments

                shipped = str(REPO / "stori_pl" / "assets" / "stori-toy.safetensors")
                runs.append({"seed": seed, **toy_instruments.emphasis(shipped, seed, root / f"pool{seed}",
                                                                      tuple(args.weights))})
            print(json.dumps(runs[-1]), flush=True)
    if args.table == "table1":
        summary = table1_summary(runs)
    else:
        import toy_instruments

        summary = toy_instruments.summarize(runs)  # mean, sd, min, max over seeds
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
