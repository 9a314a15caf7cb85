"""tools/paper_tables.py: Table 1's prompt sets are the controls they claim to be; the summaries pair by seed.

The measured tables (docs/paper_results.md) take minutes per seed and are not re-run here; tests/test_science.py
asserts the emphasis sweep of Table 3 on one pool.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import paper_tables  # noqa: E402


@pytest.mark.parametrize("bench_name", ["toy_shapes", "toy_kinds"])
def test_nonsense_prompts_match_the_descriptions_but_mean_nothing(bench_name):
    sets = paper_tables.prompt_sets(bench_name)
    descriptions, templates, nonsense = sets["descriptions"], sets["templates"], sets["nonsense"]
    assert list(descriptions) == list(templates) == list(nonsense)
    vocabulary = set(paper_tables.NONSENSE_WORDS)
    for name in descriptions:
        assert templates[name] == [f"a photo of a {name}."]
        assert len(nonsense[name]) == len(descriptions[name])  # as many prompts ...
        for text, sentence in zip(nonsense[name], descriptions[name]):
            head, _, tail = text.removesuffix(".").partition(", ")
            assert head == f"a photo of a {name}"
            words = tail.split()
            assert len(words) == len(sentence.split()) and set(words) <= vocabulary  # ... and words, no meaning
    assert paper_tables.prompt_sets(bench_name) == sets  # seeded: the same control every run


def test_table1_summary_pairs_the_seeds():
    # templates vary a lot between seeds, the differences do not: the paired interval is narrow
    runs = [{"seed": s, "descriptions": t + 0.02, "templates": t, "nonsense": t - 0.01}
            for s, t in ((1, 0.60), (2, 0.70), (3, 0.80))]
    out = paper_tables.table1_summary(runs)
    assert out["templates"]["mean"] == pytest.approx(70.0) and out["templates"]["sd"] == pytest.approx(10.0)
    assert out["descriptions_minus_templates"]["mean"] == pytest.approx(2.0)
    assert out["descriptions_minus_templates"]["ci95"] == pytest.approx([2.0, 2.0], abs=1e-9)
    assert out["nonsense_minus_templates"]["mean"] == pytest.approx(-1.0)


def test_opaque_names_hide_the_class_and_leave_the_descriptions():
    from stori_pl.toy.data import ATTRIBUTES

    sets = paper_tables.prompt_sets("toy_shapes", names="opaque")
    given = paper_tables.prompt_sets("toy_shapes")
    names = paper_tables.opaque_names(list(given["templates"]))
    assert len(set(names.values())) == len(names) == 48  # one made-up word per class
    attribute_words = {v for values in ATTRIBUTES.values() for v in values}
    for cls, word in names.items():
        assert not any(v in word for v in attribute_words), word  # the name says nothing of the look
        template = f"a photo of a {word}."
        assert sets["templates"][cls] == [template]
        # the template comes first (the model's base prompts, which name the real class, are off), then the
        # same descriptions / nonsense as with the given names, with the made-up word in the nonsense prompts
        assert sets["descriptions"][cls] == [template] + given["descriptions"][cls]
        assert sets["nonsense"][cls][0] == template and len(sets["nonsense"][cls]) == 1 + len(given["nonsense"][cls])
        assert all(p.startswith(f"a photo of a {word}, ") for p in sets["nonsense"][cls][1:])
        assert not any(cls in p for s in sets.values() for p in s[cls][:1])
