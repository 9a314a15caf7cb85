"""Explanation metrics of the toy world on hand-made word weights with known answers, the function-word
handling of the word summaries, and the ``stori explain-eval`` command's argument errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from stori_pl.text.function_words import is_function_word
from stori_pl.toy import TOY_GROUND_TRUTH as TRUTH
from stori_pl.interpret.metrics import (
    contrast_classes,
    defining_words,
    emphasis_groups,
    explanation_metrics,
    ground_truth_for,
    prompt_metrics,
    sign_agreement,
    weight_metrics,
)
from stori_pl.interpret.viz.words import (
    emphasis,
    markdown_top_words,
    top_words,
    top_words_legend,
)

CLASSES = ["striped red circle", "dotted red circle", "striped blue square"]
# "a small striped red circle on a white background ." : defining = striped, red, circle (3 of 10 words)
WORDS = ["a", "small", "striped", "red", "circle", "on", "a", "white", "background", "."]


def prompt(weights):
    return list(zip(WORDS, weights))


def test_ground_truth_of_toy_classes():
    assert TRUTH.class_values("dotted blue square") == {"pattern": "dotted", "color": "blue", "shape": "square"}
    assert TRUTH.class_values("striped red") is None and TRUTH.class_values("banded red circle") is None
    assert TRUTH.covers(CLASSES) and not TRUTH.covers(["dog", "cat"]) and not TRUTH.covers(CLASSES[:1])
    assert ground_truth_for(CLASSES) is TRUTH and ground_truth_for(["dog", "cat"]) is None  # toy registered it
    words = defining_words(CLASSES, TRUTH)
    assert words["striped red circle"] == {"striped": "striped", "stripes": "striped", "stripe": "striped",
                                           "red": "red", "circle": "circle"}
    assert set(words["dotted red circle"]) >= {"dotted", "dots"}
    # an attribute shared by every class defines nothing: here all classes are red
    only_red = defining_words(["striped red circle", "dotted red circle", "dotted red square"], TRUTH)
    assert "red" not in only_red["striped red circle"] and "circle" in only_red["striped red circle"]
    with pytest.raises(ValueError, match="not toy-world classes: \\['dog'\\]"):
        defining_words(["dog", "striped red circle"], TRUTH)


def test_uniform_weights_score_one_and_the_uniform_sink():
    m = prompt_metrics(prompt([1.0] * 10), defining_words(CLASSES, TRUTH)["striped red circle"], TRUTH, k=3)
    assert m["discriminative_share"] == pytest.approx(1.0)
    # sinks: a, small, on, a, white, background, . = 7 of 10 words
    assert m["sink_share"] == pytest.approx(0.7) and m["sink_share_uniform"] == pytest.approx(0.7)
    assert m["precision_at_k"] == pytest.approx(1 / 3)  # ties keep prompt order: a, small, striped


def test_known_answers():
    defining = defining_words(CLASSES, TRUTH)["striped red circle"]
    # all weight on the three class words: share 1 vs 3/10 uniform -> 10/3; top-3 all defining; no sink
    m = prompt_metrics(prompt([0, 0, 1, 1, 1, 0, 0, 0, 0, 0]), defining, TRUTH, k=3)
    assert m["discriminative_share"] == pytest.approx(10 / 3)
    assert m["precision_at_k"] == 1.0 and m["sink_share"] == 0.0
    # "small" and "background" carry half the weight; red is the top word
    m = prompt_metrics(prompt([0, 2, 0, 4, 0, 0, 0, 0, 2, 0]), defining, TRUTH, k=2)
    assert m["discriminative_share"] == pytest.approx((4 / 8) / (3 / 10))
    assert m["precision_at_k"] == pytest.approx(0.5) and m["sink_share"] == pytest.approx(0.5)
    # the scale of the weights does not matter (word_weights normalizes, absolute views do not)
    scaled = prompt_metrics(prompt([0, 20, 0, 40, 0, 0, 0, 0, 20, 0]), defining, TRUTH, k=2)
    assert scaled == pytest.approx(m)
    # synonyms count: "stripes" names the class's pattern
    syn = prompt_metrics([("a", 1.0), ("circle", 2.0), ("with", 1.0), ("stripes", 2.0)], defining, TRUTH, k=2)
    assert syn["precision_at_k"] == 1.0 and syn["discriminative_share"] == pytest.approx((4 / 6) / (2 / 4))
    # precision counts out of min(k, number of defining words): one defining word, top-1 of 3 -> 1.0
    one = prompt_metrics([("a", 0.1), ("red", 5.0), ("thing", 0.2)], defining, TRUTH, k=3)
    assert one["precision_at_k"] == 1.0
    assert prompt_metrics([("a", 1.0), ("thing", 1.0)], defining, TRUTH) is None  # nothing to score
    with pytest.raises(ValueError, match="k must be >= 1"):
        prompt_metrics(prompt([1.0] * 10), defining, TRUTH, k=0)


def test_per_class_means_and_summary():
    good = prompt([0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    uniform = prompt([1.0] * 10)
    weights = {"striped red circle": [good, uniform], "dotted red circle": [[("a", 1.0), ("thing", 1.0)]],
               "striped blue square": [uniform]}
    per_class = weight_metrics(weights, TRUTH, k=3)
    assert set(per_class) == {"striped red circle", "striped blue square"}  # no scored prompt: left out
    assert per_class["striped red circle"]["discriminative_share"] == pytest.approx((10 / 3 + 1) / 2)
    result = explanation_metrics(weights, TRUTH, k=3)
    assert result.summary["discriminative_share"] == pytest.approx(((10 / 3 + 1) / 2 + 1) / 2)
    assert "sign_agreement" not in result.summary  # no model, no images
    assert result.to_dict()["per_class"]["striped blue square"]["sink_share"] == pytest.approx(0.7)


def test_uniform_baselines_and_the_distractor_share():
    defining = defining_words(CLASSES, TRUTH)["striped red circle"]
    # ToyShapesSpurious's sentence form: the words after "next to" (function words aside) name the distractor
    words = ["a", "striped", "red", "circle", "next", "to", "a", "small", "green", "circle", "."]
    assert TRUTH.distractor_words(words) == [False] * 7 + [True, True, True, False]
    assert not any(TRUTH.distractor_words(WORDS))  # ToyShapes' sentences name none
    # weight 2 on red, 1 on green, 0 elsewhere: distractor share (1/3) / (3/11); the distractor's "circle" is
    # no defining word (the main object's is): striped, red, circle are 3 of 11 words
    m = prompt_metrics([(w, {"red": 2.0, "green": 1.0}.get(w, 0.0)) for w in words], defining, TRUTH, k=3)
    assert m["distractor_share"] == pytest.approx((1 / 3) / (3 / 11))
    assert m["discriminative_share"] == pytest.approx((2 / 3) / (3 / 11))
    assert "distractor_share" not in prompt_metrics(prompt([1.0] * 10), defining, TRUTH)
    weights = {"striped red circle": [[(w, {"red": 2.0, "green": 1.0}.get(w, 0.0)) for w in words], prompt([1.0] * 10)],
               "striped blue square": [prompt([1.0] * 10)]}
    per_class = weight_metrics(weights, TRUTH, k=3)
    row = per_class["striped red circle"]
    # the distractor share averages over the prompts that name a distractor only; every baseline is the same
    # prompts with all weights 1: share 1 by definition, precision = defining words among the first 3 words
    assert row["distractor_share"] == pytest.approx((1 / 3) / (3 / 11)) and row["distractor_share_uniform"] == 1.0
    assert row["discriminative_share_uniform"] == pytest.approx(1.0)
    # (the pattern is the same for both classes: defines nothing) first 3 words "a striped red": 1 of min(3, 2);
    # "a small striped": 0 of 3
    assert row["precision_at_k_uniform"] == pytest.approx((1 / 2 + 0) / 2)
    assert set(per_class) == {"striped red circle"}  # "a small striped red circle ..." names no blue square
    assert "precision_at_k_uniform" not in weight_metrics(weights, TRUTH, k=3, uniform=False)["striped red circle"]
    # the top word as `stori explain` names it first (geometric mean over the class's two prompts, x1 where absent):
    # red (x22/3 and x1 -> x2.71) beats the distractor's green (x11/3 in one prompt -> x1.91); the mean over
    # occurrences alone would name green (x3.67 > x2.71), a word of one prompt
    assert row["top_word_defining"] == 1.0
    assert top_words(weights, 1, over="prompts")[0][0][0] == "red" and top_words(weights, 1)[0][0][0] == "green"
    only_first = weight_metrics({**weights, "striped red circle": weights["striped red circle"][:1]}, TRUTH)["striped red circle"]
    assert only_first["top_word_defining"] == 1.0  # red alone: x22/3
    # with all weights 1 no word is emphasized: no top word
    assert "top_word_defining" not in weight_metrics({**weights, "striped red circle": [prompt([1.0] * 10)]}, TRUTH)["striped red circle"]
    # printed and JSON names: precision_at_3, precision_at_3_uniform
    result = explanation_metrics(weights, TRUTH, k=3)
    assert {"precision_at_3", "precision_at_3_uniform", "distractor_share"} <= set(result.to_dict()["summary"])


def test_contrast_classes_are_the_one_attribute_twins():
    from stori_pl.toy.data import SHAPES_SPEC

    names = list(SHAPES_SPEC.classes)  # 4 shapes x 4 colors x 3 patterns
    c = names.index("striped red circle")
    twins = {a: {names[k] for k in contrast_classes(names, TRUTH, c, a)} for a in ("pattern", "color", "shape")}
    assert twins["pattern"] == {"plain red circle", "dotted red circle"}
    assert twins["color"] == {"striped green circle", "striped blue circle", "striped yellow circle"}
    assert twins["shape"] == {"striped red square", "striped red triangle", "striped red star"}


TOY_PROMPTS = {
    "classnames": ["striped red circle", "dotted red circle", "striped blue circle"],
    "base": [[], [], []],
    "cupl": [["a small striped red circle on a white background."], ["a red circle with dots."],
             ["a large blue circle with stripes next to a small red square."]],
}


@pytest.fixture(scope="module")
def toy_named(tiny_clip):
    """A random tiny CLIP's SToRI with toy-world class names (no training: only the bookkeeping is tested)."""
    from stori_pl.models.stori import StoriClassifier

    return StoriClassifier(clip_model="stori-tiny", pretrained=None, start_block=2, use_base_prompts=False,
                           prompts=TOY_PROMPTS)


def test_emphasis_groups_mark_each_prompts_own_values(toy_named):
    from stori_pl.text.syntax import token_words

    groups, dirs = emphasis_groups(toy_named, TRUTH)
    assert groups == ["pattern", "color", "size", "background"]  # the shape is the same for all: defines nothing
    marked = {}
    for p in range(toy_named.n_cupl):
        for w, pos in token_words(toy_named.frozen.cupl_tokens[p], toy_named.tokenizer):
            for g, a in enumerate(groups):
                if dirs[g, p, pos].all() and dirs[g, p, pos].any():
                    marked.setdefault((p, a), []).append(w)
                else:
                    assert not dirs[g, p, pos].any()  # all pieces of a word or none
    assert marked[(0, "pattern")] == ["striped"] and marked[(0, "color")] == ["red"]
    assert marked[(0, "size")] == ["small"] and marked[(0, "background")] == ["white"]
    assert marked[(1, "pattern")] == ["dots"] and (1, "size") not in marked
    # the distractor's words ("small red square") are no value of the class: left out
    assert marked[(2, "color")] == ["blue"] and marked[(2, "size")] == ["large"] and marked[(2, "pattern")] == ["stripes"]


def test_sign_agreement_counts_on_known_derivatives(toy_named, monkeypatch):
    """Hand-made logits and derivatives: which pairs are positive is known, so the fractions are too."""
    import torch

    import stori_pl.interpret.metrics as M

    # 2 images of class 0 (striped red circle), both correctly classified; contrast: pattern -> class 1, color -> 2
    logits = torch.tensor([[3.0, 1.0, 1.0], [3.0, 0.0, 2.0]])  # [N, C]
    d = torch.zeros(4, 2, 3)  # [G = pattern, color, size, background, N, C]
    # the class's own logit drops along its pattern and color words on both images (absolute: 0 of 4), its twins'
    # drop more except for the pattern twin on image 1: T_pattern = logit_0 - logit_1 moves by -1 + 3 > 0 on
    # image 0 and by -1 + 0.5 < 0 on image 1; T_color = logit_0 - logit_2 by -0.5 + 1 > 0 on both (3 of 4)
    d[0, :, 0], d[0, 0, 1], d[0, 1, 1] = -1.0, -3.0, -0.5
    d[1, :, 0], d[1, :, 2] = -0.5, -1.0
    d[2, 0, 0] = 1.0  # size: raises T (both targets) on image 0 only
    d[3, :, 0] = -1.0  # background: lowers T on both
    monkeypatch.setattr(M, "emphasis_derivatives", lambda model, f, dirs, lw=None: (logits, d))
    out = sign_agreement(toy_named, torch.zeros(2, 8), torch.tensor([0, 0]), TRUTH)
    row = out["striped red circle"]
    assert row["sign_agreement"] == 0.75 and row["sign_agreement_absolute"] == 0.0
    assert row["sign_agreement_nuisance"] == pytest.approx(2 / 8)  # size on image 0, for both targets T_a
    assert set(out) == {"striped red circle"}  # no image of the other classes


def test_absolute_sign_agreement_is_the_per_word_attribution_sign(toy_named):
    """The directional derivative along a value's words equals the sum of attribute()'s per-word attributions
    (an independent code path), so the absolute sign agreement reproduces the pre-issue-22 metric."""
    import torch

    from stori_pl.interpret.attribution import attribute

    torch.manual_seed(3)
    with torch.no_grad():
        toy_named.log_weights.copy_(torch.randn_like(toy_named.log_weights))
    try:
        feats = torch.randn(6, toy_named.clip.visual.output_dim)
        preds = toy_named.classify_features(feats).argmax(-1)
        labels = preds.clone()  # every image "correct": all are scored
        defining = defining_words(toy_named.classnames, TRUTH)
        hits = total = 0
        for i in range(len(feats)):
            c = int(labels[i])
            per_value = {}
            for p in attribute(toy_named, feats[i], c).prompts:
                for w, a in p:
                    if w in defining[toy_named.classnames[c]]:
                        per_value[defining[toy_named.classnames[c]][w]] = per_value.get(defining[toy_named.classnames[c]][w], 0) + a
            # pattern and color only (the shape defines nothing here); every prompt names both
            hits += sum(a > 0 for a in per_value.values())
            total += len(per_value)
        out = sign_agreement(toy_named, feats, labels, TRUTH)
        n = {name: int((labels == k).sum()) for k, name in enumerate(toy_named.classnames)}
        ours = sum(row["sign_agreement_absolute"] * 2 * n[name] for name, row in out.items())
        assert total == 2 * len(feats) and ours == pytest.approx(hits)
        # the contrastive target needs twins: "striped blue circle" has none in pattern (no dotted blue circle)
        assert contrast_classes(toy_named.classnames, TRUTH, 2, "pattern") == []
    finally:
        with torch.no_grad():
            toy_named.log_weights.zero_()


def test_function_words_are_left_out_or_marked():
    assert is_function_word("there") and is_function_word(".") and is_function_word("The")
    assert not is_function_word("red") and not is_function_word("background")
    weights = {"striped red circle": [[("there", 3.0), ("is", 2.0), ("a", 0.1), ("red", 2.0), ("circle", 0.2), (".", 1.0)]]}
    up, down = top_words(weights, k=5)
    assert [w for w, _, _ in up] == ["red"] and [w for w, _, _ in down] == ["circle"]
    up_all, _ = top_words(weights, k=5, function_words=True)
    assert [w for w, _, _ in up_all][:2] == ["there", "is"]
    table = markdown_top_words(weights, k=3)
    assert "there" not in table and "red ×" in table and "left out" in top_words_legend()
    marked = markdown_top_words(weights, k=3, function_words="mark")
    assert "_there°_ ×" in marked and "red ×" in marked and "°_: function word" in top_words_legend("mark")
    with pytest.raises(ValueError, match="'exclude' or 'mark'"):
        markdown_top_words(weights, function_words="hide")


def test_absolute_weights_are_shown_as_they_are():
    # every other word went down (0.5), "red" stayed at 1: relative views call it emphasized, absolute not
    p = [("a", 0.5), ("red", 1.0), ("circle", 0.5)]
    assert emphasis(p)[1] == pytest.approx(1.5) and emphasis(p, absolute=True) == [0.5, 1.0, 0.5]
    up, down = top_words({"c": [p]}, absolute=True)
    assert up == [] and [w for w, _, _ in down] == ["circle"]
    assert "| c | — | circle ×0.50 |" in markdown_top_words({"c": [p]}, absolute=True)
    assert top_words_legend(absolute=True).startswith("×: absolute weight (1 = unchanged)")
    with pytest.raises(ValueError, match="finite and >= 0"):
        emphasis([("a", math.nan)], absolute=True)


def test_explain_eval_rejects_bad_input(tmp_path):
    from stori_pl.cli import run_command

    with pytest.raises(FileNotFoundError, match="missing.ckpt not found"):
        run_command("explain-eval", [str(tmp_path / "missing.ckpt")])
    with pytest.raises(ValueError, match="--top_k must be >= 1"):
        run_command("explain-eval", [str(tmp_path / "missing.ckpt"), "--top_k", "0"])


PROMPTS = {
    "classnames": ["striped red circle", "dotted blue square"],
    "base": [["a photo of a striped red circle."], ["a photo of a dotted blue square."]],
    "cupl": [["there is a red circle with stripes."], ["a blue square, with dots."]],
}


def test_readability_options_of_stori_classifier(tiny_clip):
    import torch

    from stori_pl.models.stori import StoriClassifier

    model = StoriClassifier(clip_model="stori-tiny", pretrained=None, start_block=2, freeze_function_words=True,
                            max_log_weight=1.0, log_weight_l2=0.5, log_weight_l1=0.25, prompts=PROMPTS)
    with torch.no_grad():
        model.log_weights.fill_(3.0)  # beyond the bound, on every token (frozen ones included)
    weights = model.word_weights(absolute=True)
    for prompts in weights.values():
        for w, v in prompts[0]:
            # function words and punctuation keep weight 1; the others are bounded by e^1 (1 * tanh(3) < 1)
            assert v == pytest.approx(1.0) if is_function_word(w) else 1.0 < v < math.e
    assert [w for w, _ in weights["striped red circle"][0]] == ["there", "is", "a", "red", "circle", "with", "stripes", "."]
    trained = model.trainable_log_weights()  # [T]: red circle stripes blue square dots
    assert trained.numel() == 6 and torch.allclose(trained, torch.tanh(torch.tensor(3.0)).expand(6))
    expected = 0.5 * trained.square().mean() + 0.25 * trained.abs().mean()
    assert model.log_weight_penalty().item() == pytest.approx(expected.item())
    assert StoriClassifier(clip_model="stori-tiny", pretrained=None, start_block=2, prompts=PROMPTS).log_weight_penalty() is None
    for bad in ({"log_weight_l2": -1.0}, {"max_log_weight": 0.0}):
        with pytest.raises(ValueError, match="must be"):
            StoriClassifier(clip_model="stori-tiny", pretrained=None, **bad)


def test_training_adds_the_log_weight_penalty(tiny_clip):
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from stori_pl.models.stori import StoriClassifier

    def one_step(l2: float) -> torch.Tensor:
        model = StoriClassifier(clip_model="stori-tiny", pretrained=None, start_block=2, lr=0.1,
                                log_weight_l2=l2, prompts=PROMPTS)
        with torch.no_grad():
            model.log_weights.fill_(1.0)
        torch.manual_seed(0)
        data = [{"features": f, "label": y} for f, y in zip(torch.randn(8, model.clip.visual.output_dim), torch.arange(8) % 2)]
        trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.fit(model, DataLoader(data, batch_size=8))
        if l2:
            assert trainer.callback_metrics["train/log_weight_penalty"].item() == pytest.approx(l2)  # mean(1²) · l2
        return model.trainable_log_weights().detach()

    # the data gradient alone moves the log-weights both ways; a strong penalty pulls every one towards 0
    free, pulled = one_step(0.0), one_step(100.0)
    assert (free > 1).any() and (pulled < 1).all()


def test_explain_eval_prints_and_writes_every_metric_by_name(toy_named, tmp_path, capsys):
    """`stori explain-eval` on a toy-class checkpoint (weights only: no images needed), and the printed line of
    every metric with its uniform baseline."""
    import json

    import lightning as L
    import torch

    from stori_pl.cli import main
    from stori_pl.cli.explain_eval import format_metrics
    from stori_pl.interpret.metrics import ExplanationMetrics

    with torch.no_grad():
        toy_named.log_weights.normal_(generator=torch.Generator().manual_seed(4))
    try:
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.strategy.connect(toy_named)
        trainer.save_checkpoint(tmp_path / "toy.ckpt")
        expected = explanation_metrics(toy_named.word_weights(), TRUTH, 3)
    finally:
        with torch.no_grad():
            toy_named.log_weights.zero_()
    assert main(["explain-eval", str(tmp_path / "toy.ckpt"), "--sign_agreement", "false", "--json",
                 str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    for name in ("discriminative_share", "discriminative_share_uniform", "precision_at_3 ", "precision_at_3_uniform",
                 "distractor_share", "distractor_share_uniform", "sink_share_uniform"):
        assert name in out
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["k"] == 3 and "precision_at_k" not in written["summary"]
    assert written["summary"]["precision_at_3"] == pytest.approx(expected.summary["precision_at_k"])
    assert written["summary"]["distractor_share"] == pytest.approx(expected.summary["distractor_share"])
    # the sign agreements, as explain-eval prints them next to their baselines
    text = format_metrics(ExplanationMetrics({"sign_agreement": 0.9, "sign_agreement_uniform": 0.8,
                                              "sign_agreement_nuisance": 0.5, "sign_agreement_nuisance_uniform": 0.4}))
    assert text.splitlines()[0].split() == ["sign_agreement", "0.900", "sign_agreement_uniform", "0.800"]
    assert text.splitlines()[1].split() == ["sign_agreement_nuisance", "0.500", "sign_agreement_nuisance_uniform", "0.400"]


# ------------------------------------------------------------------------------ toy world: trained weights
# 12 ToyShapes classes in which every class has twins in each attribute (2 shapes x 2 colors x 3 patterns), the
# demo's model settings (configs/demo.yaml: start block 7, lr 0.4, function words at 1), 8 shots, 15 epochs.
SMALL_CLASSES = [f"{p} {c} {s}" for s in ("circle", "square") for c in ("red", "blue") for p in ("plain", "striped", "dotted")]
SMALL_FIT = {"shots": 8, "epochs": 15, "max_per_class": 30}


def small_fit_metrics(root, seed: int = 1) -> dict[str, dict[str, float]]:
    """Explanation metrics (summaries) of a small demo-like fit: ``{"trained", "shuffled"}``; the uniform
    baselines are in "trained" (``<metric>_uniform``). "shuffled" permutes each prompt's trained weights across
    its words (the same weights, on the wrong words: a broken explanation method)."""
    import lightning as L
    import torch
    import yaml

    from stori_pl.models import StoriClassifier
    from stori_pl.toy.data import ToyShapes

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
    L.seed_everything(seed, verbose=False)
    dm = ToyShapes(root=str(root), shots=SMALL_FIT["shots"], seed=seed, classes=SMALL_CLASSES)
    model = StoriClassifier(**cfg["model"]["init_args"])
    trainer = L.Trainer(max_epochs=SMALL_FIT["epochs"], accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    model.eval()
    dm.setup("test")
    batches = list(dm.test_dataloader())
    feats, labels = torch.cat([b["features"] for b in batches]), torch.cat([b["label"] for b in batches])
    weights = model.word_weights()
    trained = explanation_metrics(weights, TRUTH, 3, model, feats, labels, SMALL_FIT["max_per_class"])
    g = torch.Generator().manual_seed(seed)
    shuffled = {c: [[(w, p[int(j)][1]) for (w, _), j in zip(p, torch.randperm(len(p), generator=g))] for p in ps]
                for c, ps in weights.items()}
    return {"trained": {**trained.summary, "test_acc": float((model.classify_features(feats).argmax(-1).cpu() == labels).float().mean())},
            "shuffled": explanation_metrics(shuffled, TRUTH, 3).summary}


@pytest.fixture(scope="module")
def small_fit(toy_shapes_data):
    """:func:`small_fit_metrics` of few-shot seed 1, once per module (the session's ToyShapes and feature cache)."""
    import torch

    weights = Path(__file__).resolve().parents[1] / "stori_pl" / "assets" / "stori-toy.safetensors"
    if not weights.is_file():
        pytest.skip("shipped stori-toy weights missing")
    data, cache = toy_shapes_data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORI_CACHE", str(cache))
        try:
            return small_fit_metrics(data, seed=1)
        finally:
            torch.set_num_threads(threads)


@pytest.mark.slow
def test_trained_weights_beat_uniform_and_shuffled_weights_fail(small_fit):
    """A small demo-like fit (:data:`SMALL_CLASSES`, :data:`SMALL_FIT`; ~30 s with the data generation).

    Measured over seeds 1-3 (``small_fit_metrics(root, seed)``): discriminative share 1.67 / 1.78 / 1.58,
    precision@3 0.54 / 0.52 / 0.56 (uniform 0.32), sink share 0.46 / 0.46 / 0.50 (uniform 0.67). The broken
    method, each prompt's trained weights shuffled across its words, gives 0.96 / 0.95 / 0.97, 0.31 / 0.25 / 0.28
    and 0.68 / 0.68 / 0.66: it fails every threshold below, as do uniform weights (1.0, 0.32, 0.67).
    """
    trained, shuffled = small_fit["trained"], small_fit["shuffled"]
    assert trained["test_acc"] > 0.55, trained  # measured 0.66-0.69: the fit itself worked
    # discriminative share: threshold 1.3, 0.28 below the measured minimum, 0.33 above shuffled's maximum
    assert trained["discriminative_share"] >= 1.3 > max(shuffled["discriminative_share"], trained["discriminative_share_uniform"])
    # precision@3: threshold 0.42, 0.10 below the minimum (0.52), 0.10 above the shuffled / uniform maximum (0.32)
    assert trained["precision_at_k"] >= 0.42 > max(shuffled["precision_at_k"], trained["precision_at_k_uniform"])
    # sink share: threshold 0.58, 0.08 above the maximum (0.50), 0.08 below shuffled's minimum (0.66)
    assert trained["sink_share"] <= 0.58 < min(shuffled["sink_share"], trained["sink_share_uniform"])


@pytest.mark.slow
def test_contrastive_sign_agreement_separates_defining_from_nuisance_words(small_fit):
    """Measured over seeds 1-3: contrastive sign agreement 0.77 / 0.80 / 0.76 (uniform weights 0.82: at the
    trained weights the data's gradient is spent, so training does *not* raise it), nuisance 0.47 / 0.48 / 0.48
    (uniform 0.50). The absolute-logit target, the broken metric issue 22 replaces, gives 0.16 / 0.17 / 0.14:
    it fails the 0.65 threshold that the contrastive one passes."""
    t = small_fit["trained"]
    # threshold 0.65: 0.11 below the measured minimum (0.758); the absolute target's maximum is 0.17
    assert t["sign_agreement"] >= 0.65 > t["sign_agreement_absolute"]
    assert t["sign_agreement_uniform"] >= 0.65  # the toy CLIP's text tower already agrees at zero-shot
    # nuisances: <= 0.6 (issue 22's target; measured max 0.48) and at least 0.15 below the defining words
    # (measured gaps 0.30 / 0.32 / 0.28)
    assert t["sign_agreement_nuisance"] <= 0.6 and t["sign_agreement"] - t["sign_agreement_nuisance"] >= 0.15


def test_weight_plot_callback_logs_the_new_metrics_during_validation(toy_named, tmp_path):
    """In a fit (validation runs under inference mode), WeightPlotCallback logs explain/<metric> and
    explain/<metric>_uniform, the contrastive sign agreements included (double backpropagation inside validation)."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers.logger import Logger

    from stori_pl.lightning.callbacks import WeightPlotCallback

    class Memory(Logger):
        name, version = "memory", 0
        logged: list = []

        @property
        def experiment(self):
            return None

        def log_metrics(self, metrics, step=None):
            self.logged.append(dict(metrics))

        def log_hyperparams(self, *args, **kwargs):
            pass

    class Data(L.LightningDataModule):
        def __init__(self, dim):
            super().__init__()
            g = torch.Generator().manual_seed(5)
            self.items = [{"features": torch.randn(dim, generator=g), "label": i % 3} for i in range(24)]

        def train_dataloader(self):
            return torch.utils.data.DataLoader(self.items, batch_size=12)

        val_dataloader = train_dataloader

    logger = Memory()
    trainer = L.Trainer(max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0, default_root_dir=tmp_path,
                        callbacks=[WeightPlotCallback(write_html=False, write_json=False)])
    try:
        trainer.fit(toy_named, datamodule=Data(toy_named.clip.visual.output_dim))
    finally:
        with torch.no_grad():
            toy_named.log_weights.zero_()
    explained = {k for m in logger.logged for k in m if k.startswith("explain/")}
    assert {"explain/discriminative_share", "explain/precision_at_k", "explain/precision_at_k_uniform",
            "explain/distractor_share", "explain/sink_share"} <= explained
    # random features: some images are classified correctly, so the sign agreements are there too
    assert {"explain/sign_agreement", "explain/sign_agreement_uniform", "explain/sign_agreement_absolute"} <= explained
