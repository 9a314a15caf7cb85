"""The SToRI encoder: parity with encode_text, Eq. 4, fast and chunked paths, bad input."""

from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from stori_pl import WeightedTextEncoder, load_clip
from stori_pl.text.clip import clear_clip_cache

PROMPTS = [
    "a photo of a dog.",
    "a close-up of a striped red circle on a blue background, with dotted edges",
    "hello",
    "banded texture with regular horizontal stripes in alternating colours.",
]


@pytest.fixture(scope="module")
def custom_text_models(tmp_path_factory):
    """Two tiny CustomTextCLIP configs: MHA blocks and open_clip's custom attention blocks."""
    folder = tmp_path_factory.mktemp("cfg")
    base = {
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 4},
    }
    names = []
    for name, extra in [("stori-test-custom", {}), ("stori-test-customblk", {"block_type": "CustomResidualAttentionBlock"})]:
        cfg = json.loads(json.dumps(base))
        cfg["text_cfg"].update(extra)
        (folder / f"{name}.json").write_text(json.dumps(cfg))
        names.append(name)
    open_clip.add_model_config(folder)
    return names


def _tokens(tokenizer, prompts=PROMPTS):
    return tokenizer(prompts)


@pytest.mark.parametrize("name", ["ViT-B-32", "stori-tiny"])
def test_zero_log_weights_equal_encode_text(name):
    model, _, tok = load_clip(name)
    tokens = _tokens(tok)
    ref = model.encode_text(tokens)
    enc = WeightedTextEncoder(model, start_block=min(7, len(model.transformer.resblocks)))
    torch.testing.assert_close(enc(tokens), ref)
    torch.testing.assert_close(enc(tokens, torch.zeros(tokens.shape)), ref)
    torch.testing.assert_close(enc.prepare(tokens).encode(torch.zeros(tokens.shape)), ref)


@pytest.mark.slow
def test_zero_log_weights_equal_encode_text_vit_l14():
    model, _, tok = load_clip("ViT-L-14")
    tokens = _tokens(tok)
    enc = WeightedTextEncoder(model, start_block=7)
    torch.testing.assert_close(enc(tokens, torch.zeros(tokens.shape)), model.encode_text(tokens))
    clear_clip_cache()


def test_custom_text_clip_parity(custom_text_models):
    for name in custom_text_models:
        model, _, tok = load_clip(name)
        assert type(model).__name__ == "CustomTextCLIP"
        tokens = _tokens(tok)
        enc = WeightedTextEncoder(model, start_block=2)
        torch.testing.assert_close(enc(tokens, torch.zeros(tokens.shape)), model.encode_text(tokens))
        lw = torch.randn(tokens.shape)
        torch.testing.assert_close(enc(tokens, lw), _eq4_reference(model.text, tokens, lw.exp(), 2), rtol=1e-4, atol=1e-4)


def _eq4_reference(text, tokens, weights, start_block):
    """Slow, independent SToRI: explicit w_n·exp(q·k_n)/Σ_j w_j·exp(q·k_j), looping over heads."""
    n = tokens.shape[1]
    eot = tokens.argmax(-1)
    x = text.token_embedding(tokens) + text.positional_embedding[:n]  # [B, L, W]
    causal = torch.tril(torch.ones(n, n))
    for i, blk in enumerate(text.transformer.resblocks):
        h = blk.ln_1(x)
        attn = blk.attn
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        heads = attn.num_heads
        d = q.shape[-1] // heads
        out = torch.zeros_like(q)
        for b in range(tokens.shape[0]):
            w = torch.ones(n)
            if i + 1 >= start_block:
                real = (torch.arange(n) >= 1) & (torch.arange(n) < eot[b])
                w = torch.where(real, weights[b], torch.ones(n))
            for hd in range(heads):
                sl = slice(hd * d, (hd + 1) * d)
                logits = q[b, :, sl] @ k[b, :, sl].T / math.sqrt(d)  # [L, L]
                num = w[None, :] * torch.exp(logits - logits.max(-1, keepdim=True).values) * causal
                out[b, :, sl] = (num / num.sum(-1, keepdim=True)) @ v[b, :, sl]
        proj = attn.out_proj if hasattr(attn, "out_proj") else None
        x = x + proj(out)
        x = x + blk.mlp(blk.ln_2(x))
    pooled = text.ln_final(x[torch.arange(x.shape[0]), eot])
    proj = text.text_projection
    return proj(pooled) if isinstance(proj, torch.nn.Module) else pooled @ proj


class _TextView:
    """Give a plain CLIP the ``model.text`` shape the reference expects."""

    def __init__(self, model):
        self.__dict__.update({k: getattr(model, k) for k in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")})


@pytest.mark.parametrize("start_block", [1, 3, 4])
def test_matches_eq4_reference(tiny_clip, start_block):
    model, _, tok = tiny_clip
    tokens = _tokens(tok)
    torch.manual_seed(start_block)
    weights = torch.rand(tokens.shape) * 2.5  # includes weights near 0 and > 1
    enc = WeightedTextEncoder(model, start_block=start_block)
    ref = _eq4_reference(_TextView(model), tokens, weights, start_block)
    torch.testing.assert_close(enc(tokens, weights.log()), ref, rtol=1e-4, atol=1e-4)


def test_zero_weight_masks_token_out(tiny_clip):
    model, _, tok = tiny_clip
    tokens = _tokens(tok)
    weights = torch.ones(tokens.shape)
    weights[:, 2] = 0.0
    enc = WeightedTextEncoder(model, start_block=2)
    out = enc(tokens, weights.log())  # log 0 = -inf
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _eq4_reference(_TextView(model), tokens, weights, 2), rtol=1e-4, atol=1e-4)
    near_zero = torch.zeros(tokens.shape)
    near_zero[:, 2] = -40.0
    torch.testing.assert_close(out, enc(tokens, near_zero), rtol=1e-4, atol=1e-5)


def test_weights_change_embedding_only_from_start_block(tiny_clip):
    model, _, tok = tiny_clip
    tokens = _tokens(tok)
    enc = WeightedTextEncoder(model, start_block=3)
    lw = torch.randn(tokens.shape)
    assert not torch.allclose(enc(tokens, lw), enc(tokens))
    # values at SOS, EOT and padding are ignored
    ignored = torch.where(enc.token_mask(tokens), 0.0, torch.randn(tokens.shape) * 5)
    torch.testing.assert_close(enc(tokens, ignored), enc(tokens))


def test_batched_equals_one_at_a_time(tiny_clip):
    model, _, tok = tiny_clip
    tokens = _tokens(tok)
    lw = torch.randn(tokens.shape)
    enc = WeightedTextEncoder(model, start_block=2)
    single = torch.cat([enc(tokens[i : i + 1], lw[i : i + 1]) for i in range(len(tokens))])
    torch.testing.assert_close(enc(tokens, lw), single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc(tokens, lw, bucket_size=3), single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("start_block", [1, 2, 4])
def test_fast_and_chunked_paths_match_plain(tiny_clip, start_block):
    model, _, tok = tiny_clip
    tokens = _tokens(tok, PROMPTS * 3)  # 12 prompts
    enc = WeightedTextEncoder(model, start_block=start_block)
    prep = enc.prepare(tokens)
    assert prep.length == int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]
    lw = (torch.randn(tokens.shape) * 0.5).requires_grad_()
    target = torch.randn(len(tokens), model.text_projection.shape[1])
    grads, values = [], []
    paths = (
        lambda w: enc(tokens, w),
        lambda w: prep.encode(w),
        lambda w: prep.encode(w, chunk_size=5),  # gradient caching
        lambda w: enc.prepare(tokens, bucket_size=4).encode(w),  # length buckets, one graph
    )
    for fn in paths:
        out = fn(lw)
        (grad,) = torch.autograd.grad((out * target).sum(), lw)
        values.append(out.detach())
        grads.append(grad)
    for v, g in zip(values[1:], grads[1:]):
        torch.testing.assert_close(v, values[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, grads[0], rtol=1e-4, atol=1e-5)
    # no gradient reaches SOS, EOT or padding positions
    assert (grads[0][~enc.token_mask(tokens)] == 0).all()
    assert (grads[2][~enc.token_mask(tokens)] == 0).all()
    assert grads[0][enc.token_mask(tokens)].abs().sum() > 0


def test_chunked_without_grad_and_prepared_state_not_saved(tiny_clip):
    model, _, tok = tiny_clip
    tokens = _tokens(tok)
    prep = WeightedTextEncoder(model, start_block=3).prepare(tokens)
    lw = torch.randn(tokens.shape)
    torch.testing.assert_close(prep.encode(lw, chunk_size=3), prep.encode(lw))
    assert prep.state_dict() == {}  # prefix cache never lands in checkpoints


def test_bad_input_errors(tiny_clip):
    model, _, tok = tiny_clip
    tokens = _tokens(tok)
    enc = WeightedTextEncoder(model, start_block=2)
    with pytest.raises(ValueError, match="start_block must be an int in 1..4"):
        WeightedTextEncoder(model, start_block=5)
    with pytest.raises(ValueError, match="start_block"):
        WeightedTextEncoder(model, start_block=0)
    with pytest.raises(TypeError, match="LongTensor"):
        enc(tokens.float())
    with pytest.raises(ValueError, match="do not match tokens"):
        enc(tokens, torch.zeros(2, 77))
    with pytest.raises(TypeError, match="float tensor"):
        enc(tokens, torch.zeros(tokens.shape, dtype=torch.long))
    bad = torch.zeros(tokens.shape)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or \+inf \(first at prompt 1, token 3\)"):
        enc(tokens, bad)


def test_long_prompt_warns_with_the_prompt(tiny_clip):
    from stori_pl.text.clip import tokenize

    _, _, tok = tiny_clip
    with pytest.warns(UserWarning, match="truncated: 'word word"):
        tokens = tokenize(["word " * 100, "short"], tok)
    assert tokens.shape == (2, 77)
