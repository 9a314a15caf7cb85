"""SToRI on bidirectional text towers (open_clip's SigLIP / SigLIP2 ``TextTransformer``: no causal mask, pooled at
the last position), on random-init models built from open_clip's own configs (text towers made smaller so the
CPU runs them in seconds) with token ids the test builds (the real tokenizers need a download)."""

from __future__ import annotations

import copy
import math
import warnings

import open_clip
import pytest
import torch
from open_clip.model import CustomTextCLIP

from stori_pl.text.clip import text_tower
from stori_pl.text.encoder import WeightedTextEncoder

# the tokenizers' conventions (open_clip/tokenizer.py SigLipTokenizer): T5 (SigLIP) pads with eos = 1, no BOS;
# Gemma (SigLIP2) has add_bos_token=False, add_eos_token=True, pad 0, eos 1
CONVENTIONS = {"ViT-B-16-SigLIP": {"eos": 1, "pad": 1}, "ViT-B-16-SigLIP2": {"eos": 1, "pad": 0},
               "ViT-SO400M-14-SigLIP2": {"eos": 1, "pad": 0}}
TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}


def small_model(name: str, layers: int = 4, width: int = 64, vocab: int = 500) -> CustomTextCLIP:
    """open_clip's config of ``name`` with a smaller text tower (same block type, norm, activation, pooling,
    projection, no causal mask) and a tiny vision tower; random init, eval mode."""
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    cfg["vision_cfg"] = dict(TINY_VISION)
    cfg["text_cfg"].update(layers=layers, width=width, heads=4, vocab_size=vocab)
    cfg.pop("custom_text", None)
    torch.manual_seed(0)
    model = CustomTextCLIP(**cfg).eval()
    for p in model.parameters():  # random init leaves some biases at 0; make every parameter count
        p.data.add_(torch.randn_like(p) * 0.02)
    return model


def make_tokens(n: int, length: int, vocab: int, eos: int, pad: int, seed: int = 0) -> torch.Tensor:
    """``[n, length]`` rows ``x_1..x_N eos pad ...`` with real ids outside the special ones (one row fills the
    context: no end token, as the tokenizers truncate)."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.full((n, length), pad, dtype=torch.long)
    for i in range(n):
        k = length if i == 0 else int(torch.randint(2, length - 2, (1,), generator=g))
        rows[i, :k] = torch.randint(3, vocab, (k,), generator=g)
        if k < length:
            rows[i, k] = eos
    return rows


def eq4_reference(model: CustomTextCLIP, tokens: torch.Tensor, weights: torch.Tensor, start: int) -> torch.Tensor:
    """SToRI Eq. 4 written out on open_clip's modules (no stori_pl code): from block ``start`` (1-indexed) the
    attention ``a[m, n] = w_n exp(s_mn) / sum_j w_j exp(s_mj)``; before it, plain bidirectional attention (SigLIP's
    text tower has no mask at all). Then ``ln_final``, the last position, ``text_projection``. ``[B, D]``."""
    text = model.text
    x = text.token_embedding(tokens) + text.positional_embedding[: tokens.shape[1]]  # [B, L, W]
    for i, block in enumerate(text.transformer.resblocks, start=1):
        attn = block.attn
        h = block.ln_1(x)
        q, k, v = (h @ attn.in_proj_weight.T + attn.in_proj_bias).chunk(3, dim=-1)
        b, n, width = q.shape
        heads = attn.num_heads
        q, k, v = (t.reshape(b, n, heads, width // heads).transpose(1, 2) for t in (q, k, v))  # [B, H, L, d]
        scores = (q @ k.transpose(-1, -2) / math.sqrt(width // heads)).double()  # [B, H, L, L]
        w = weights.double()[:, None, None, :] if i >= start else torch.ones_like(scores[..., :1, :])
        e = w * torch.exp(scores - scores.amax(-1, keepdim=True))
        a = (e / e.sum(-1, keepdim=True)).to(x.dtype)
        out = (a @ v).transpose(1, 2).reshape(b, n, width)
        x = x + block.ls_1(attn.out_proj(out))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    x = text.ln_final(x)
    pooled = x[:, -1] if text.pool_type == "last" else x[torch.arange(len(x)), tokens.argmax(-1)]  # "last" | "argmax"
    proj = text.text_projection
    return proj(pooled) if isinstance(proj, torch.nn.Module) else pooled @ proj


@pytest.fixture(scope="module", params=list(CONVENTIONS))
def siglip(request):
    name = request.param
    model = small_model(name)
    conv = CONVENTIONS[name]
    tokens = make_tokens(5, model.text.context_length, 500, conv["eos"], conv["pad"])
    return name, model, tokens, {conv["eos"], conv["pad"]}


def test_siglip_towers_have_no_causal_and_no_padding_mask(siglip):
    """What the encoder relies on: open_clip's SigLIP towers mask nothing, so padding reaches the pooled (last)
    position and the sequence cannot be cut after the end token."""
    name, model, tokens, special = siglip
    assert model.text.attn_mask is None and not model.text.use_pad_mask and model.text.pool_type == "last"
    other = tokens.clone()
    other[1, -1] = 7  # change one padding position
    with torch.no_grad():
        assert not torch.allclose(model.encode_text(tokens)[1], model.encode_text(other)[1], atol=1e-6)
    tower = text_tower(model, special)
    assert not tower.causal and (tower.causal_mask == 0).all()


def test_log_weights_zero_equal_encode_text(siglip):
    name, model, tokens, special = siglip
    with torch.no_grad():
        ref = model.encode_text(tokens)
        for start in (1, 3, 4):
            enc = WeightedTextEncoder(model, start_block=start, special_ids=special)
            torch.testing.assert_close(enc(tokens), ref, rtol=1e-5, atol=1e-5)  # no weights: the tower's own mask
            torch.testing.assert_close(enc(tokens, torch.zeros(tokens.shape)), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("start", [1, 2, 3, 4])
def test_random_weights_match_a_direct_eq4_loop(siglip, start):
    name, model, tokens, special = siglip
    g = torch.Generator().manual_seed(start)
    log_w = torch.randn(tokens.shape, generator=g)  # [B, L], on every position
    real = ~torch.isin(tokens, torch.tensor(sorted(special)))
    weights = torch.where(real, log_w.exp(), 1.0)  # real tokens weighted; end and padding keep weight 1
    enc = WeightedTextEncoder(model, start_block=start, special_ids=special)
    with torch.no_grad():
        ref = eq4_reference(model, tokens, weights, start)
        torch.testing.assert_close(enc(tokens, log_w), ref, rtol=1e-4, atol=1e-5)
        # the prefix cache (blocks before `start` once) stays exact: no EOT cut, every position kept
        prep = enc.prepare(tokens, bucket_size=2)
        assert prep.length == tokens.shape[1]
        torch.testing.assert_close(prep.encode(log_w), ref, rtol=1e-4, atol=1e-5)
        assert torch.equal(prep.mask, real)


def test_prefix_cache_gradients_match_and_ignore_special_tokens(siglip):
    name, model, tokens, special = siglip
    enc = WeightedTextEncoder(model, start_block=3, special_ids=special)
    prep = enc.prepare(tokens, bucket_size=2)
    lw = (torch.randn(tokens.shape) * 0.5).requires_grad_(True)
    direct = enc(tokens, lw).sum()
    (g_direct,) = torch.autograd.grad(direct, lw)
    (g_chunked,) = torch.autograd.grad(prep.encode(lw, chunk_size=2).sum(), lw)
    torch.testing.assert_close(g_chunked, g_direct, rtol=1e-4, atol=1e-6)
    assert (g_direct[~prep.mask] == 0).all() and g_direct[prep.mask].abs().sum() > 0


def test_unsupported_towers_are_refused_in_one_line():
    cfg = copy.deepcopy(open_clip.get_model_config("ViT-B-16-SigLIP2"))
    cfg["vision_cfg"], cfg["text_cfg"] = dict(TINY_VISION), {**cfg["text_cfg"], "layers": 1, "width": 32,
                                                             "heads": 2, "vocab_size": 50, "pool_type": "none"}
    cfg.pop("custom_text", None)
    model = CustomTextCLIP(**cfg)
    with pytest.raises(NotImplementedError, match="pool_type='none'") as info:
        text_tower(model)
    assert "\n" not in str(info.value)
    model.text.pool_type, model.text.use_pad_mask = "last", True
    with pytest.raises(NotImplementedError, match="padding mask"):
        text_tower(model)


# ----------------------------------------------------------------------------- (phrase:w) with SentencePiece pieces
CORPUS = ["a photo of a red car on a road", "a striped texture with small dots", "the dog is brown and furry",
          "a photo of a blue square", "zigzag lines on a gray wall", "a car on a wet road at night"]


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    """open_clip's own ``HFTokenizer`` over a SentencePiece-style (BPE, ``▁`` word starts, ``</s>`` appended,
    ``<pad>`` = 0) fast tokenizer trained here on a few sentences, as SigLIP's are built (no download)."""
    pytest.importorskip("transformers")
    from open_clip.tokenizer import HFTokenizer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))  # SentencePiece BPE, as Gemma's (SigLIP2)
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"])
    tok.train_from_iterator(CORPUS * 50, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path_factory.mktemp("sp")
    fast.save_pretrained(folder)
    return HFTokenizer(str(folder), context_length=16, clean="canonicalize")


def test_weighted_syntax_aligns_sentencepiece_pieces(sp_tokenizer):
    from stori_pl.text.syntax import token_words, tokenize_weighted

    texts = ["a photo of a (red car:2) on a road", "(a striped:0.5) texture, with (small:3) dots!",
             "the dog is brown and furry"]
    plain = ["a photo of a red car on a road", "a striped texture, with small dots!", "the dog is brown and furry"]
    tokens, log_w = tokenize_weighted(texts, sp_tokenizer)
    assert torch.equal(tokens, sp_tokenizer(plain))  # exactly open_clip's tokens
    pieces = [sp_tokenizer.tokenizer.convert_ids_to_tokens(row) for row in tokens.tolist()]
    weighted = lambda r: {p: round(float(w.exp()), 4) for p, w in zip(pieces[r], log_w[r]) if w != 0}  # noqa: E731
    assert weighted(0) == {"▁red": 2.0, "▁car": 2.0}
    assert weighted(1) == {"▁a": 0.5, "▁striped": 0.5, "▁small": 3.0}
    assert (log_w[2] == 0).all()
    assert (log_w[tokens <= 1] == 0).all()  # end and padding keep weight 1
    assert [w for w, _ in token_words(tokens[0], sp_tokenizer)] == "a photo of a red car on a road".split()
    with pytest.raises(ValueError, match="produces no tokens"):
        tokenize_weighted(["a dog (!!!:2)"], sp_tokenizer)  # canonicalize drops punctuation


def test_weighted_prompts_on_a_siglip_tower_with_sentencepiece_tokens(sp_tokenizer):
    from stori_pl.text.clip import special_token_ids
    from stori_pl.text.syntax import tokenize_weighted

    model = small_model("ViT-B-16-SigLIP2", vocab=300)
    special = special_token_ids(sp_tokenizer)
    assert special == {0, 1, 2}  # <pad>, </s>, <unk>
    enc = WeightedTextEncoder(model, start_block=2, special_ids=special)
    plain = sp_tokenizer(["a photo of a red car on a road"])  # [1, 16] (the tower pools position 15 of 16)
    tokens, log_w = tokenize_weighted(["a photo of a (red car:2) on a road"], sp_tokenizer)
    with torch.no_grad():
        ours = enc.encode_prompts(["a photo of a red car on a road"], sp_tokenizer, normalize=False)
        torch.testing.assert_close(ours, model.encode_text(plain), rtol=1e-5, atol=1e-5)
        ref = eq4_reference(model, tokens, torch.where(enc.token_mask(tokens), log_w.exp(), 1.0), start=2)
        torch.testing.assert_close(enc(tokens, log_w), ref, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(enc(tokens, log_w), model.encode_text(plain), atol=1e-3)  # the weight acts


# ----------------------------------------------------------------------------- training-side pieces on SigLIP towers
@pytest.fixture
def no_tokenizer_download(monkeypatch):
    """open_clip cannot load any tokenizer (as offline with SigLIP's): load_clip gives a random-init model the
    stand-in tokenizer (SentencePiece layout: no start token, end token, padding)."""
    from stori_pl.text import clip as clip_module

    def offline(name, **kwargs):
        raise OSError("offline")

    clip_module.clear_clip_cache()
    monkeypatch.setattr(clip_module.open_clip, "get_tokenizer", offline)
    yield
    clip_module.clear_clip_cache()


def test_random_init_model_without_its_tokenizer_gets_a_stand_in(no_tokenizer_download):
    from stori_pl.text.clip import RandomWeightsWarning, StandInTokenizer, load_clip

    with pytest.warns(RandomWeightsWarning, match="stand-in"):
        model, _, tok = load_clip("stori-tiny-sig", None)
    assert isinstance(tok, StandInTokenizer) and model.stori_special_ids == {0, 1}
    row = tok(["a red car"])[0]
    assert row.shape == (32,) and row[3] == 1 and (row[4:] == 0).all() and (row[:3] > 2).all()
    from stori_pl.text.clip import _get_tokenizer

    with pytest.raises(FileNotFoundError, match="tokenizer of stori-tiny-sig could not be loaded"):
        _get_tokenizer(model, "stori-tiny-sig", "weights.safetensors")  # pretrained weights need the real one


def test_coop_soft_prompts_start_at_the_first_word_without_a_start_token(no_tokenizer_download):
    """CoOp initialised from "a photo of a" reproduces encode_text of "a photo of a <class>." exactly, also when
    the tokenizer writes no start token (SigLIP's): the context vectors replace the first words, not position 0."""
    import torch.nn.functional as F

    from stori_pl.data.containers import PromptSet
    from stori_pl.models.coop import CoOp

    names = ["red circle", "blue square"]
    prompts = PromptSet(names, [[f"a photo of a {n}."] for n in names], [[] for _ in names]).to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coop = CoOp("stori-tiny-sig", None, ctx_init="a photo of a", prompts=prompts)
    assert coop.encoder.n_leading(coop.tokens) == 0 and coop.tokens.shape[1] == 32  # no EOT cut either
    with torch.no_grad():
        ref = F.normalize(coop.clip.encode_text(coop.tokenizer([f"a photo of a {n}." for n in names])), dim=-1)
        torch.testing.assert_close(coop.class_embeddings(), ref, rtol=1e-5, atol=1e-5)


def test_bench_runs_on_a_siglip_architecture_model(capsys):
    from stori_pl.cli import main

    argv = ["bench", "--model", "stori-tiny-sig", "--start_block", "3", "--n_prompts", "6", "--skip_memory", "true",
            "--coop_classes", "3", "--intcoop_batch", "2", "--repeats", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bidirectional text tower" in out and "(f) IntCoOp train step" in out


@pytest.mark.slow
@pytest.mark.parametrize("name, vocab, eos, pad", [("ViT-B-16-SigLIP", 32000, 1, 1),
                                                   ("ViT-B-16-SigLIP2", 256000, 1, 0)])
def test_full_size_siglip_text_towers_match_encode_text_and_eq4(name, vocab, eos, pad):
    """The real text towers (12 blocks, width 768, random init), built from open_clip's config as open_clip's
    create_model builds them."""
    from open_clip.model import _build_text_tower

    cfg = open_clip.get_model_config(name)
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.text = _build_text_tower(cfg["embed_dim"], cfg["text_cfg"]).eval()
    tokens = make_tokens(3, 64, vocab, eos=eos, pad=pad)
    log_w = torch.randn(tokens.shape)
    real = ~torch.isin(tokens, torch.tensor([eos, pad]))
    enc = WeightedTextEncoder(holder, start_block=7, special_ids={eos, pad})
    with torch.no_grad():
        torch.testing.assert_close(enc(tokens, torch.zeros(tokens.shape)), holder.text(tokens), rtol=1e-4, atol=1e-5)
        ref = eq4_reference(holder, tokens, torch.where(real, log_w.exp(), 1.0), 7)
        torch.testing.assert_close(enc(tokens, log_w), ref, rtol=1e-4, atol=1e-4)


def test_embed_word_table_reads_sentencepiece_pieces(sp_tokenizer):
    from stori_pl.cli.embed import word_table
    from stori_pl.text.syntax import tokenize_weighted

    tokens, log_w = tokenize_weighted(["a photo of a (red car:2) on a road"], sp_tokenizer)
    rows = word_table(tokens[0], log_w[0], sp_tokenizer)
    assert rows[4] == ("red", "2", "▁red") and rows[0] == ("a", "1", "▁a")


def test_bidirectional_argmax_tower_mobileclip():
    """MobileCLIP-S2's text tower: bidirectional too, but CLIP's tokenizer and argmax (EOT) pooling; padding (0)
    is not masked either."""
    from open_clip.model import _build_text_tower

    cfg = copy.deepcopy(open_clip.get_model_config("MobileCLIP-S2"))
    cfg["text_cfg"].update(layers=3, width=64, heads=4)
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.text = _build_text_tower(cfg["embed_dim"], cfg["text_cfg"]).eval()
    sot, eot = 49406, 49407
    tokens = make_tokens(4, 77, 49406, eos=eot, pad=0)[:, :-1]
    tokens = torch.cat([torch.full((4, 1), sot), tokens], dim=1)  # [SOS, x_1 .. x_N, EOT, 0 ...]
    special = {sot, eot, 0}
    enc = WeightedTextEncoder(holder, start_block=2, special_ids=special)
    assert enc.tower.pool_type == "argmax" and not enc.tower.causal and enc.n_leading(tokens) == 1
    log_w = torch.randn(tokens.shape)
    real = ~torch.isin(tokens, torch.tensor(sorted(special)))
    with torch.no_grad():
        torch.testing.assert_close(enc(tokens), holder.text(tokens), rtol=1e-5, atol=1e-5)
        ref = eq4_reference(holder, tokens, torch.where(real, log_w.exp(), 1.0), 2)
        torch.testing.assert_close(enc(tokens, log_w), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(enc.prepare(tokens).encode(log_w), ref, rtol=1e-4, atol=1e-5)


def test_cli_refuses_an_unsupported_tower_in_one_line(capsys, monkeypatch):
    """`stori embed` on a model whose text tower SToRI cannot drive: one line saying why, exit status 2."""
    from stori_pl.cli import main
    from stori_pl.text import clip as clip_module

    def fake_tower(model, special_ids=None):
        raise clip_module.UnsupportedTowerError("coca: SToRI does not support text towers with an appended class token")

    monkeypatch.setattr(clip_module, "text_tower", fake_tower)
    monkeypatch.setattr("stori_pl.text.encoder.text_tower", fake_tower)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["embed", "a red car", "--model", "stori-tiny", "--pretrained", "null"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1] == "stori embed: error: coca: SToRI does not support text towers with an appended class token"
