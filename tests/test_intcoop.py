"""IntCoOp plumbing on random-init tiny CLIPs: the prompt against a direct re-implementation, the losses, chunking,
new classes, checkpoints, visual prompts."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from stori_pl.data.containers import PromptSet

CLASSES = ["dog", "hot_dog", "golden retriever", "cat"]
WORDS = ["fluffy", "small", "greenish"]  # "greenish" is two BPE tokens in CLIP's vocabulary


def prompt_set(names=CLASSES) -> dict:
    return PromptSet(names, [[f"a photo of a {c}."] for c in names], [[] for _ in names]).to_dict()


def make(**kwargs):
    from stori_pl.models import IntCoOp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return IntCoOp("stori-tiny", None, attribute_words=WORDS, prompts=prompt_set(), **kwargs)


@pytest.fixture(scope="module")
def model():
    m = make(class_chunk=3)
    with torch.no_grad():  # move every part away from its start so each one matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def reference_clip(model):
    """A separate open_clip model with the IntCoOp model's CLIP weights (no stori-pl function on the path)."""
    from pathlib import Path

    import open_clip

    open_clip.add_model_config(Path(__file__).resolve().parents[1] / "stori_pl" / "model_configs" / "stori-tiny.json")
    ref = open_clip.create_model("stori-tiny", pretrained=None)
    ref.load_state_dict(model.clip.state_dict())
    return ref.eval()


def reference_parts(model, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The instance context ``ctx(I) [B, M, W]`` and the attribute token ``A(I) [B, W]`` written out with torch
    functionals from the trained tensors (IntCoOp, arXiv 2406.13683 §3: ``A`` a small network on the image
    embedding; context conditioned by multi-head attention; wiring as docs/intcoop.md states it): not the
    model's ``conditioner`` / ``extractor`` modules."""
    import math

    d = features.shape[-1]
    scaled = F.normalize(features, dim=-1) * math.sqrt(d)  # [B, D]
    net = model.extractor.net
    attr = F.linear(F.gelu(F.linear(scaled, net[0].weight, net[0].bias)), net[2].weight, net[2].bias)  # [B, W]
    cond = model.conditioner
    t, w = cond.kv_tokens, cond.width
    kv = F.linear(scaled, cond.to_kv.weight, cond.to_kv.bias).view(len(features), t, w)  # [B, T, W]
    mha = cond.attn
    heads, hd = mha.num_heads, w // mha.num_heads
    wq, wk, wv = mha.in_proj_weight.split(w)
    bq, bk, bv = mha.in_proj_bias.split(w)
    q = model.ctx.unsqueeze(0).expand(len(features), -1, -1)  # [B, M, W]

    def split(x):  # [B, L, W] -> [B, heads, L, hd]
        return x.view(x.shape[0], x.shape[1], heads, hd).transpose(1, 2)

    qh, kh, vh = split(F.linear(q, wq, bq)), split(F.linear(kv, wk, bk)), split(F.linear(kv, wv, bv))
    att = (qh @ kh.transpose(-1, -2) / math.sqrt(hd)).softmax(-1)  # [B, heads, M, T]
    out = (att @ vh).transpose(1, 2).reshape(len(features), -1, w)  # [B, M, W]
    return q + F.linear(out, mha.out_proj.weight, mha.out_proj.bias), attr


def reference_logits(model, features: torch.Tensor) -> torch.Tensor:
    """Direct re-implementation: per image and class, the prompt ``[SOS] ctx(I) A(I) [CLASS] . [EOT]`` through
    the CoOp official ``TextEncoder`` (trainers/coop.py l. 46–57) on all 77 positions of a separate open_clip
    model, tokenized with ``open_clip.tokenize``."""
    import open_clip

    clip = reference_clip(model)
    ctx, attr = reference_parts(model, features)
    m = ctx.shape[1]
    out = torch.zeros(len(features), len(CLASSES))
    for b in range(len(features)):
        texts = [" ".join(["X"] * (m + 1)) + " " + c.replace("_", " ") + "." for c in CLASSES]
        tokens = open_clip.tokenize(texts)  # [C, 77]
        emb = clip.token_embedding(tokens)
        x = torch.cat([emb[:, :1], ctx[b].expand(len(CLASSES), -1, -1), attr[b].expand(len(CLASSES), 1, -1),
                       emb[:, 2 + m:]], dim=1) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        text = F.normalize(x[torch.arange(len(x)), tokens.argmax(-1)] @ clip.text_projection, dim=-1)
        out[b] = clip.logit_scale.exp() * F.normalize(features[b], dim=-1) @ text.T
    return out


def test_logits_match_direct_reimplementation(model):
    feats = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(feats), reference_logits(model, feats), atol=1e-4, rtol=1e-4)
        ctx, attr = reference_parts(model, feats)
        assert (ctx - model.ctx).abs().max() > 1e-3  # the conditioning is on: the reference checks the attention


def test_class_chunks_and_gradients_match_one_chunk(model):
    """class_chunk=3 (2 chunks, gradient checkpointing) gives the same logits and gradients as one chunk."""
    from stori_pl.models import IntCoOp

    one = IntCoOp("stori-tiny", None, attribute_words=WORDS, prompts=prompt_set(), class_chunk=64)
    one.load_state_dict(model.state_dict())
    batch = {"features": torch.randn(5, 32), "label": torch.tensor([0, 1, 2, 3, 0]),
             "attribute": torch.tensor([0, 1, 2, -1, 0])}
    grads = []
    for m in (model, one):
        m.zero_grad()
        logits, parts, loss = m.losses(batch)
        loss.backward()
        grads.append((logits.detach(), {k: float(v.detach()) for k, v in parts.items()},
                      [p.grad.clone() for p in m.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert grads[0][1] == pytest.approx(grads[1][1], rel=1e-5)
    for a, b in zip(grads[0][2], grads[1][2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert all(g.abs().sum() > 0 for g in grads[0][2][:1] + grads[0][2][-2:])  # ctx and the conditioning learn


def test_start_is_the_handcrafted_prompt():
    """At step 0 (zero-init attention output) with A(I) = e("fluffy"), the prompt is exactly the text
    'a photo of a fluffy <class>.': the same logits as CLIP with those sentences."""
    m = make()
    with torch.no_grad():
        m.extractor.net[2].bias.copy_(m.word_table[0])
    feats = torch.randn(4, 32)
    sentences = [f"a photo of a fluffy {c.replace('_', ' ')}." for c in CLASSES]
    text = F.normalize(m.clip.encode_text(m.tokenizer(sentences)), dim=-1)
    expected = m.clip.logit_scale.exp() * F.normalize(feats, dim=-1) @ text.T
    with torch.no_grad():
        torch.testing.assert_close(m(feats), expected, atol=1e-4, rtol=1e-4)
        batch = {"features": feats, "label": torch.tensor([0, 1, 2, 3]), "attribute": torch.tensor([0, 0, 0, -1])}
        _, parts, _ = m.losses(batch)
    assert float(parts["attr"]) == pytest.approx(0.0, abs=1e-6)  # A(I) is the label's embedding
    assert float(parts["reg"]) == pytest.approx(0.0, abs=1e-5)  # the learned prompt is the hand-crafted one


def test_multi_token_word_target_is_the_mean_of_its_tokens():
    m = make()
    tokens = m.tokenizer(["greenish"])[0]
    ids = tokens[1 : int(tokens.argmax())]
    assert len(ids) >= 2
    torch.testing.assert_close(m.word_table[2], m.clip.token_embedding(ids).mean(0).detach())


def test_attribute_loss_ignores_unlabelled_images():
    from stori_pl.models.intcoop_parts import attribute_loss

    pred, table = torch.randn(3, 8), torch.randn(2, 8)
    full = attribute_loss(pred, table, torch.tensor([0, 1, -1]), 2.0)
    assert float(full) == pytest.approx(float((pred[:2] - table[[0, 1]]).pow(2).sum(-1).mean() / 2.0))
    assert float(attribute_loss(pred, table, torch.tensor([-1, -1, -1]), 2.0)) == 0.0


def test_one_key_token_is_refused_and_attention_is_not_uniform():
    from stori_pl.models.intcoop_parts import InstanceContext

    with pytest.raises(ValueError, match="kv_tokens must be >= 2.*additive shift"):
        InstanceContext(64, 32, heads=4, kv_tokens=1)
    torch.manual_seed(0)
    cond = InstanceContext(64, 32, heads=4, kv_tokens=4)
    _, weights = cond(torch.randn(4, 64), torch.randn(2, 32), return_weights=True)  # [B, M, T]
    assert weights.shape == (2, 4, 4)
    assert float((weights[:, 0] - weights[:, 1]).detach().abs().max()) > 1e-3  # context vectors attend differently


def test_new_classes_keep_the_trained_parts(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    new = ["truck", "bicycle", "red fire engine"]
    m = make(class_chunk=2)
    m.load_state_dict(state)
    m.build(prompt_set(new))
    assert m.classnames == new and m.supports_new_classes
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert m(torch.randn(2, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="depend on each image"):
        m.export_classifier("never-written.safetensors")


def test_visual_prompts_need_images_and_change_the_embedding():
    m = make(visual_prompts=2, visual_prompt_depth=2)
    batch = {"features": torch.randn(2, 32), "label": torch.tensor([0, 1])}
    with pytest.raises(ValueError, match="return_images: true"):
        m.losses(batch)
    images = torch.randn(2, 3, *m.clip.visual.image_size)
    with torch.no_grad():
        plain = m.clip.encode_image(images)
        prompted = m.visual_prompt.encode(m.clip.visual, images)
    assert prompted.shape == plain.shape and not torch.allclose(prompted, plain)
    loss = m.losses({"image": images, "label": torch.tensor([0, 1])})[2]
    loss.backward()
    assert float(m.visual_prompt.tokens.grad.abs().sum()) > 0


def test_context_words_of_coop_and_the_prompt_reading():
    """CoOp's interpretation: a context initialized from a phrase reads back as that phrase (distance 0), for
    plain CoOp and IntCoOp; IntCoOp's reading names A(I)'s word and writes the prompt."""
    from stori_pl.interpret.prompt_words import context_words, read_prompt
    from stori_pl.models import CoOp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coop = CoOp("stori-tiny", None, ctx_init="a photo of a", prompts=prompt_set())
    m = make()
    for model in (coop, m):
        words = context_words(model, k=2)
        assert [w[0][0] for w in words] == ["a", "photo", "of", "a"]
        assert all(w[0][1] < 1e-3 < w[1][1] for w in words), words  # cdist: float error ~1e-4
    with torch.no_grad():
        m.extractor.net[2].bias.copy_(m.word_table[1])  # A(I) = e("small") for every image
    reading = read_prompt(m, torch.randn(32), "hot_dog", k=2)
    assert reading.attribute == "small" and reading.similarity == pytest.approx(1.0, abs=1e-5)
    assert reading.prompt == "a photo of a small hot dog."


def test_token_text_decodes_byte_pieces():
    """Nearest tokens of a context vector can be non-ASCII BPE pieces; they print as text, not raw bytes."""
    import open_clip

    from stori_pl.interpret.prompt_words import token_text

    tok = open_clip.get_tokenizer("ViT-B-32")
    thai = next(i for i, piece in tok.decoder.items() if piece == "à¸¡")
    photo = next(i for i, piece in tok.decoder.items() if piece == "photo</w>")
    assert token_text(tok, thai) == "ม"
    assert token_text(tok, photo) == "photo"
