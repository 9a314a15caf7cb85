"""Retrieval metrics against hand-computed values, ratio curves, AUC, and the Figure-4/5 plots."""

from __future__ import annotations

import pytest
import torch

from stori_pl.retrieval import metrics as R


def test_rank_is_descending_and_stable():
    assert R.rank(torch.tensor([0.1, 0.5, 0.5, 0.9])).tolist() == [3, 1, 2, 0]


def test_average_precision_hand_computed():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.tensor([1, 0, 1, 0, 1])
    # hits at ranks 1, 3, 5: precisions 1, 2/3, 3/5
    assert R.average_precision(scores, labels) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3, abs=1e-6)
    # order of the input does not matter, only the scores
    perm = torch.tensor([4, 2, 0, 1, 3])
    assert R.average_precision(scores[perm], labels[perm]) == pytest.approx(0.755556, abs=1e-5)
    assert R.average_precision(scores, torch.zeros(5)) == 0.0
    assert R.average_precision(scores, torch.ones(5)) == pytest.approx(1.0)


def test_precision_at_k_hand_computed():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.tensor([1, 0, 1, 0, 1])
    assert R.precision_at_k(scores, labels, 1) == 1.0
    assert R.precision_at_k(scores, labels, 2) == 0.5
    assert R.precision_at_k(scores, labels, 3) == pytest.approx(2 / 3)
    assert R.precision_at_k(scores, labels, 10) == pytest.approx(3 / 10)  # missing ranks count as misses
    with pytest.raises(ValueError, match="k must be"):
        R.precision_at_k(scores, labels, 0)
    with pytest.raises(ValueError, match="equal length"):
        R.precision_at_k(scores, labels[:3], 1)


def test_ratio_curves_and_auc_hand_computed():
    scores = torch.tensor([0.9, 0.6, 0.7, 0.8])
    cats = torch.tensor([0, 1, 0, 1])  # ranked categories: 0, 1, 0, 1
    curves = R.category_ratio_curves(scores, cats, num_categories=3)
    assert curves.shape == (3, 4)
    assert curves[0].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert curves[1].tolist() == [0.0, 0.5, 0.5, 1.0]
    assert curves[2].tolist() == [0.0] * 4  # empty category
    assert R.curve_auc(curves).tolist() == pytest.approx([0.75, 0.5, 0.0])


def test_auc_perfect_and_reversed_ranking():
    cats = torch.tensor([0] * 5 + [1] * 5)
    scores = torch.linspace(1, 0, 10)  # category 0 first
    auc = R.curve_auc(R.category_ratio_curves(scores, cats))
    # first category: mean of (1..5)/5 then five 1s over 10 ranks = (3 + 5) / 10
    assert auc.tolist() == pytest.approx([0.8, 0.3])
    assert R.curve_auc(R.category_ratio_curves(-scores, cats)).tolist() == pytest.approx([0.3, 0.8])


def test_category_names():
    assert R.category_names(["A", "B"]) == ["-A -B", "+A -B", "-A +B", "+A +B"]
    assert len(R.category_names(["a", "b", "c"])) == 8


def test_figures_save_png_and_log(tmp_path):
    names = R.category_names(["A", "B"])
    cur = R.category_ratio_curves(torch.rand(20), torch.arange(20) % 4, 4)
    fig = R.plot_ratio_curves({"w=0.5": cur, "plain": cur}, names, "title")

    class Writer:
        calls = []

        def add_figure(self, tag, figure, global_step=0, close=True):
            self.calls.append((tag, global_step))

    class Logger:  # Lightning-like: .experiment is the SummaryWriter
        experiment = Writer()

    R.log_figure(Logger(), "retrieval/ratio", fig, step=3)
    assert Writer.calls == [("retrieval/ratio", 3)]
    R.save_figure(fig, tmp_path / "ratio.png")
    fig = R.plot_auc_vs_weight([0.0, 1.0, 2.0], {"stori": torch.rand(3, 4), "prompt_weighting": torch.rand(3, 4)}, names)
    R.save_figure(fig, tmp_path / "auc.png")
    for name in ("ratio.png", "auc.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auc.png", "ratio.png"]  # no temp files left
