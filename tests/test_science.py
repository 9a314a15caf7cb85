"""The science, asserted on the shipped tiny CLIP (`stori-toy`, trained by `stori toy-pretrain`), not on random weights.

Every threshold below was set from a measurement on the shipped weights, with margin; the measured values are
in the comments (and in docs/readme/toy.md). All computations are deterministic on CPU (fixed seeds, fixed
generated data), so "noise" only means few-shot sampling variation, which the nonsense check bounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stori_pl.data import toy

WEIGHTS = Path(__file__).resolve().parents[1] / "stori_pl" / "assets" / "stori-toy.safetensors"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped stori-toy weights missing (run `stori toy-pretrain`)"),
]
K = toy.TOY_START_BLOCK
NONSENSE = " sks pll ucd"
TWO = ["striped red circle", "dotted red circle"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Toy benchmarks generated once for this module (feature cache in the same temp folder)."""
    base = tmp_path_factory.mktemp("toy")
    mp = pytest.MonkeyPatch()
    mp.setenv("STORI_CACHE", str(base / "cache"))
    toy.write_toy_shapes(base)
    toy.write_toy_attributes(base, per_category=toy.RETRIEVAL_PER_CATEGORY)
    yield base
    mp.undo()


@pytest.fixture(scope="module")
def retrieval_report(root):
    from stori_pl.retrieval_runner import run_preference_retrieval

    ds = toy.load_toy_attributes(root)
    return run_preference_retrieval(ds, toy.toy_retrieval_tasks(), "stori-toy", "builtin", start_block=K,
                                    per_category=toy.RETRIEVAL_PER_CATEGORY, weights=(0.5, 1.5), top_k=(80,))


def _deltas(report: dict, weight: float, metric: str) -> torch.Tensor:
    rows = report["rows"]
    plain = {(r["task"], r["attribute"]): r[metric] for r in rows if r["weight"] == 1.0}
    return torch.tensor([r[metric] - plain[(r["task"], r["attribute"])] for r in rows if r["weight"] == weight])


def test_zero_shot_accuracy_of_shipped_weights():
    meta = json.loads(WEIGHTS.with_suffix(".json").read_text())
    acc = meta["zero_shot_heldout"]
    assert acc["color"] >= 0.90 and acc["shape"] >= 0.90 and acc["pattern"] >= 0.80, acc


def test_emphasis_moves_average_precision(retrieval_report):
    up, down = _deltas(retrieval_report, 1.5, "AP"), _deltas(retrieval_report, 0.5, "AP")
    assert len(up) >= 10  # (task, attribute) cases
    # measured: see docs/readme/toy.md
    assert up.mean() > UP_AP and down.mean() < -DOWN_AP, (up.mean(), down.mean())
    assert (up > 0).float().mean() >= FRAC and (down < 0).float().mean() >= FRAC


def test_emphasis_moves_precision_at_k(retrieval_report):
    up, down = _deltas(retrieval_report, 1.5, "P@80"), _deltas(retrieval_report, 0.5, "P@80")
    assert up.mean() > UP_P and down.mean() < -DOWN_P, (up.mean(), down.mean())


def _fit(root, **kwargs):
    from stori_pl.quickstart import train_toy_stori

    return train_toy_stori(root, start_block=K, **kwargs)


def test_few_shot_stori_beats_zero_shot(root):
    _, _, acc = _fit(root, epochs=EPOCHS)
    assert acc["stori"] >= acc["zero_shot"] + GAIN, acc


def test_learned_weights_land_on_the_discriminative_word(root):
    model, _, acc = _fit(root, classes=TWO, epochs=EPOCHS)
    pattern_words = {"striped", "stripes", "dotted", "dots"}
    ratios = []
    for prompts in model.word_weights().values():
        for words in prompts:
            attr = [w for word, w in words if word in pattern_words]
            rest = [w for word, w in words if word not in pattern_words]
            if attr:
                ratios.append(sum(attr) / len(attr) / (sum(rest) / len(rest)))
    ratios = torch.tensor(ratios)
    assert len(ratios) >= 8
    assert ratios.mean() > RATIO and (ratios > 1).float().mean() >= 0.75, ratios


def test_nonsense_tokens_do_not_help(root, tmp_path):
    cupl = toy.toy_cupl()
    path = tmp_path / "nonsense.json"
    path.write_text(json.dumps({k: [s + NONSENSE for s in v] for k, v in cupl.items()}))
    from stori_pl.quickstart import train_toy_stori

    _, _, plain = _fit(root, epochs=EPOCHS)
    _, _, nonsense = train_toy_stori(root, start_block=K, epochs=EPOCHS, cupl=str(path))
    assert nonsense["stori"] <= plain["stori"] + NOISE, (plain, nonsense)
