"""Word attributions: shape, sign on a constructed case, agreement with finite differences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stori_pl.interpret.attribution import (
    _class_embedding,
    attribute,
    attribution_figures,
)

PROMPTS = {
    "classnames": ["dog", "cat", "statue", "tree"],
    "base": [["a photo of a dog."], ["a photo of a cat."], [], ["a photo of a tree."]],
    "cupl": [["a fluffy dog with floppy ears.", "a loyal hound"], ["a small cat with whiskers."], ["a marble statue"], []],
}


@pytest.fixture(scope="module")
def model(tiny_clip):
    from stori_pl.models.stori import StoriClassifier

    return StoriClassifier(clip_model="stori-tiny", pretrained=None, start_block=2, prompts=PROMPTS)


def _embedding(model, text: str, word: int, log_w: float) -> torch.Tensor:
    """Normalized embedding of ``text`` with one word's pieces at log-weight ``log_w``: [D]."""
    from stori_pl.text.clip import tokenize
    from stori_pl.text.encoder import WeightedTextEncoder
    from stori_pl.text.syntax import token_words

    tokens = tokenize([text], model.tokenizer)  # [1, 77]
    lw = torch.zeros(tokens.shape, dtype=torch.float32)  # [1, 77]
    lw[0, token_words(tokens[0], model.tokenizer)[word][1]] = log_w
    with torch.no_grad():
        return F.normalize(WeightedTextEncoder(model.clip, start_block=2)(tokens, lw)[0], dim=-1)


def test_shape_matches_word_weights(model):
    torch.manual_seed(0)
    feature = torch.randn(model.clip.visual.output_dim)
    result = attribute(model, feature, 0)
    weights = model.word_weights()["dog"]
    assert result.class_name == "dog" and len(result.prompts) == 2
    assert [[w for w, _ in p] for p in result.prompts] == [[w for w, _ in p] for p in weights]
    values = torch.tensor([a for p in result.prompts for _, a in p])
    assert values.isfinite().all() and values.abs().max() > 1e-3
    # both targets only see normalize(f): blind to f's length
    scaled = torch.tensor([a for p in attribute(model, 3 * feature, 0).prompts for _, a in p])
    torch.testing.assert_close(scaled, values)
    # d logit / d log-weight with logit = scale · <normalize(f), W_c> is odd in f (log p is not)
    logit = torch.tensor([a for p in attribute(model, feature, 0, target="logit").prompts for _, a in p])
    flipped = torch.tensor([a for p in attribute(model, -feature, 0, target="logit").prompts for _, a in p])
    torch.testing.assert_close(flipped, -logit)


@pytest.mark.parametrize("word", [1, 4])  # "fluffy", "floppy"
def test_sign_on_constructed_image(model, word):
    # An "image" that looks exactly like the prompt with one word emphasized: emphasizing that word
    # more moves the class towards the image, so its attribution is positive and the largest; for the
    # opposite image it is negative and the smallest.
    image = _embedding(model, PROMPTS["cupl"][0][0], word, 4.0)
    attr = [a for _, a in attribute(model, image, 0).prompts[0]]
    assert attr[word] > 0 and attr[word] == max(attr)
    attr_neg = [a for _, a in attribute(model, -image, 0).prompts[0]]
    assert attr_neg[word] < 0 and attr_neg[word] == min(attr_neg)


@pytest.mark.parametrize("target", ["log_prob", "logit"])
def test_matches_finite_differences_at_trained_weights(model, target):
    from stori_pl.text.clip import tokenize
    from stori_pl.text.syntax import token_words

    def score(image):  # the target, from the model's own forward pass
        logits = model(image[None], model.class_embeddings())[0]  # [C]
        return (logits.log_softmax(-1) if target == "log_prob" else logits)[0].item()

    torch.manual_seed(1)
    with torch.no_grad():
        model.log_weights.copy_(torch.randn_like(model.log_weights) * 0.5)  # "trained" weights
    try:
        image = torch.randn(model.clip.visual.output_dim)
        # the per-class shortcut agrees with the model's own class embeddings
        rows = (model.prompt_class[: model.n_cupl] == 0).nonzero().flatten()
        with torch.no_grad():
            ours = _class_embedding(model, 0, rows, model.log_weights[rows])
            assert torch.allclose(ours, model.class_embeddings()[0], atol=1e-5)
        result = attribute(model, image, 0, target=target)
        assert result.target == target
        words = token_words(tokenize([PROMPTS["cupl"][0][0]], model.tokenizer)[0], model.tokenizer)
        eps = 1e-2
        for word in (1, 2):
            scores = []
            for sign in (1, -1):
                with torch.no_grad():
                    model.log_weights[0, words[word][1]] += sign * eps
                    scores.append(score(image))
                    model.log_weights[0, words[word][1]] -= sign * eps
            fd = (scores[0] - scores[1]) / (2 * eps)
            assert result.prompts[0][word][1] == pytest.approx(fd, rel=2e-2, abs=1e-4)
        with torch.no_grad():
            logits = model(image[None], model.class_embeddings())[0]
        assert result.logit == pytest.approx(logits[0].item(), abs=1e-4)
        assert result.log_prob == pytest.approx(logits.log_softmax(-1)[0].item(), abs=1e-4)
    finally:
        with torch.no_grad():
            model.log_weights.zero_()


def test_log_prob_is_the_logit_attribution_scaled_by_the_probability_left(model):
    # only class c's prompts act on its logit, so d log p_c = (1 - p_c) d logit_c on those prompts:
    # same signs, smaller values
    image = torch.randn(model.clip.visual.output_dim)
    lp, lg = attribute(model, image, 1), attribute(model, image, 1, target="logit")
    scale = 1 - math.exp(lp.log_prob)
    for p_lp, p_lg in zip(lp.prompts, lg.prompts):
        for (_, a), (_, b) in zip(p_lp, p_lg):
            assert a == pytest.approx(scale * b, rel=1e-4, abs=1e-7)
    with pytest.raises(ValueError, match="target must be one of"):
        attribute(model, image, 1, target="margin")


def test_batch_matches_single_images(model):
    from stori_pl.interpret.attribution import attribute_batch

    images = torch.randn(3, model.clip.visual.output_dim)
    batch = attribute_batch(model, images, 0)
    assert len(batch) == 3
    for r, image in zip(batch, images):
        single = attribute(model, image, 0)
        assert [[w for w, _ in p] for p in r.prompts] == [[w for w, _ in p] for p in single.prompts]
        assert [a for p in r.prompts for _, a in p] == pytest.approx([a for p in single.prompts for _, a in p], abs=1e-6)


def test_image_inputs_errors_and_rendering(model, tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(path)
    from_path = attribute(model, str(path), 1)
    from_pil = attribute(model, Image.open(path), 1)
    assert from_path.prompts == from_pil.prompts and len(from_path.prompts) == 1
    feature = torch.randn(1, model.clip.visual.output_dim)
    as_row = attribute(model, feature, 2).prompts  # [1, D] features
    assert as_row and as_row == attribute(model, feature[0], 2).prompts
    only_base = attribute(model, str(path), 3)  # no CuPL prompts: nothing to attribute
    assert only_base.prompts == [] and only_base.class_name == "tree"
    with pytest.raises(ValueError, match="class_index must be an int in 0..3"):
        attribute(model, str(path), 4)
    with pytest.raises(ValueError, match="cannot read image"):
        attribute(model, str(tmp_path / "missing.jpg"), 0)
    with pytest.raises(ValueError, match="one image"):
        attribute(model, torch.randn(2, 3, 32, 32), 0)
    figs = attribution_figures(from_path)
    assert "cat" in figs[0].axes[0].texts[0].get_text()
    pos, neg = from_path.top_words(3)
    assert pos and neg and all(a > 0 for _, a in pos) and all(a < 0 for _, a in neg)
    assert [a for _, a in pos] == sorted((a for _, a in pos), reverse=True) and len(pos) <= 3
    # over several prompts a word's attributions add up ("a" starts both of the dog's CuPL prompts)
    dog = attribute(model, str(path), 0)
    pos, neg = dog.top_words(100)
    total = dict(pos + neg)
    assert dog.prompts[0][0][0] == dog.prompts[1][0][0] == "a"
    assert total["a"] == pytest.approx(dog.prompts[0][0][1] + dog.prompts[1][0][1])
    assert set(total) == {w for p in dog.prompts for w, a in p if a != 0}


def test_emphasis_derivatives_match_finite_differences(model):
    """d logits / d ε along a direction over several prompts (two classes at once), and the attribution of a word
    as the special case of a direction with one word: exact derivatives, so a wrong sign or scale fails."""
    from stori_pl.interpret.attribution import emphasis_derivatives

    torch.manual_seed(2)
    with torch.no_grad():
        model.log_weights.copy_(torch.randn_like(model.log_weights) * 0.5)  # "trained" weights
    try:
        images = torch.randn(3, model.clip.visual.output_dim)
        dirs = torch.zeros(2, *model.log_weights.shape)  # [2, P, L']
        dirs[0, 0, 2] = 1.0  # one piece of the dog's first prompt
        dirs[1, :, 1:4] = 1.0  # three pieces of every prompt: dog, cat and statue move together
        logits, derivs = emphasis_derivatives(model, images, dirs)
        assert logits.shape == (3, 4) and derivs.shape == (2, 3, 4)
        eps = 1e-2
        for g in range(2):
            with torch.no_grad():
                base = model.log_weights.clone()
                model.log_weights.copy_(base + eps * dirs[g])
                up = model(images, model.class_embeddings())
                model.log_weights.copy_(base - eps * dirs[g])
                down = model(images, model.class_embeddings())
                model.log_weights.copy_(base)
            torch.testing.assert_close(derivs[g], (up - down) / (2 * eps), rtol=2e-2, atol=1e-4)
        assert derivs[0, :, 1:].abs().max() == 0  # the dog's direction moves no other class's logit
        assert derivs[1, :, 3].abs().max() == 0  # the tree has no CuPL prompt
        # one word's direction is that word's attribution (the logit target) from attribute()
        one = attribute(model, images[0], 0, target="logit").prompts[0]
        dirs1 = torch.zeros(1, *model.log_weights.shape)
        from stori_pl.text.clip import tokenize
        from stori_pl.text.syntax import token_words

        word, pos = token_words(tokenize([PROMPTS["cupl"][0][0]], model.tokenizer)[0], model.tokenizer)[1]
        dirs1[0, 0, pos] = 1.0
        _, d1 = emphasis_derivatives(model, images[:1], dirs1)
        assert d1[0, 0, 0].item() == pytest.approx(one[1][1], rel=1e-3, abs=1e-6) and one[1][0] == word
        # at zero log-weights (uniform) the derivatives differ from the trained ones
        _, d0 = emphasis_derivatives(model, images, dirs, log_weights=torch.zeros_like(model.log_weights))
        assert not torch.allclose(d0, derivs)
        with pytest.raises(ValueError, match="directions must be"):
            emphasis_derivatives(model, images, dirs[0])
    finally:
        with torch.no_grad():
            model.log_weights.zero_()


def test_contrastive_weights_on_known_logits():
    from stori_pl.interpret.attribution import contrastive_weights

    logits = torch.tensor([[2.0, 0.0, 0.0, 5.0], [0.0, math.log(3.0), 0.0, 0.0]])  # [2, 4]
    w = contrastive_weights(logits, 0, [1, 2])
    # T = logit_0 − logsumexp(logit_1, logit_2): +1 at the class, −softmax over the contrast, 0 elsewhere
    torch.testing.assert_close(w, torch.tensor([[1.0, -0.5, -0.5, 0.0], [1.0, -0.75, -0.25, 0.0]]))
    torch.testing.assert_close(w.sum(-1), torch.zeros(2))
    # the same as autograd through T
    lg = logits.clone().requires_grad_(True)
    (lg[:, 0] - lg[:, [1, 2]].logsumexp(-1)).sum().backward()
    torch.testing.assert_close(lg.grad, w)
    # a common shift of every logit (what emphasizing any word does to the absolute logit) does not move T
    assert (w * torch.ones(2, 4)).sum(-1).abs().max() < 1e-6
    for bad in ([], [0, 1]):
        with pytest.raises(ValueError, match="contrast must name"):
            contrastive_weights(logits, 0, bad)
