"""Weighted prompt syntax, BPE alignment and word display (stori_pl.text.syntax)."""

from __future__ import annotations

import math

import pytest
import torch

from stori_pl.text.syntax import (
    PromptSyntaxError,
    escape_prompt,
    parse_weighted_prompt,
    token_words,
    tokenize_weighted,
)

PLAIN_STRINGS = [
    "a photo of a dog.",
    "Hello,  WORLD!!   (tabs\tand\nnewlines)",
    "  leading and trailing spaces   ",
    "don't we'll they're I'm it's you've he'd",
    "a photo of a reddish-brown, long-haired golden retriever; 3 dogs & 12 cats...",
    "caf\u00e9 na\u00efve \u00fcber \u00e5ngstr\u00f6m Stra\u00dfe",
    "emoji 🐶🐶 and 中文字符 and العربية",
    "&amp; &lt;tag&gt; &amp;amp; html entities",
    "curly \u2018quotes\u2019 and \u201cdouble\u201d, \ufb01sh ligature, \uff21\uff22 fullwidth",
    "mojibake cafÃ© and NFC cafe\u0301",
    "numbers 3.14159 and 2024-06-01 and 1,000,000",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "punctuation?!... (){}[]<>/\\|@#$%^*_+=~`",
    "",
    "   ",
]

WEIGHTED = [
    "a photo of a (red:1.5) car",
    "(a (b:2) c:1.5)",
    "a (photo of a ((very:2) tall:0.5) man:1.2).",
    "(red:1.5)dish and (super:0)califragilistic",
    "a \\(literal\\) (16:9 screen:2) \\\\ and \\: colon",
    "(&amp; caf\u00e9:2) \ufb01sh (\u2018quoted\u2019:0.7)",
    "(emoji 🐶:3) and (中文:0.5)",
    "  ( spaced  words :  1.25 )  end  ",
    "photo: a (dog:1e-1)",
]


@pytest.fixture(scope="module")
def tok():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


CASES = [(s, False) for s in PLAIN_STRINGS] + [(escape_prompt(s), True) for s in PLAIN_STRINGS + WEIGHTED]
CASES += [(s, True) for s in WEIGHTED]


@pytest.mark.parametrize(("text", "syntax"), CASES)
def test_tokens_equal_open_clip(tok, text, syntax):
    plain = parse_weighted_prompt(text)[0] if syntax else text
    tokens, log_w = tokenize_weighted([text], tok, syntax=syntax)
    assert torch.equal(tokens, tok([plain]))
    assert log_w[0, 0] == 0 and (log_w[0][tokens[0] == 0] == 0).all()
    eot = int(tokens[0].argmax())
    assert log_w[0, eot] == 0
    # words re-assemble every real token exactly once, in order
    words = token_words(tokens[0], tok)
    assert [p for _, ps in words for p in ps] == list(range(1, eot))


def test_escape_roundtrip():
    for s in PLAIN_STRINGS + ["(a:2) \\( : \\"]:
        plain, spans = parse_weighted_prompt(escape_prompt(s))
        assert plain == s and all(w == 1.0 for *_, w in spans)


def test_parse_spans_nested_and_escaped():
    plain, spans = parse_weighted_prompt("a (photo of a ((very:2) tall:0.5) man:1.2).")
    assert plain == "a photo of a very tall man."
    assert spans == [(0, 2, 1.0), (2, 17, 1.2), (17, 22, 0.6), (22, 26, 1.2), (26, 27, 1.0)]
    plain, spans = parse_weighted_prompt("a \\(x\\) (16:9 b:2)")
    assert plain == "a (x) 16:9 b" and spans == [(0, 6, 1.0), (6, 12, 2.0)]
    assert parse_weighted_prompt("") == ("", [])
    assert parse_weighted_prompt("photo: x")[0] == "photo: x"  # colon outside a group is literal
    assert parse_weighted_prompt("C:\\dir")[0] == "C:\\dir"  # backslash before other chars is literal


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("a (red) car", 7, "missing weight"),
        ("a (red:) car", 8, "missing or invalid"),
        ("a (red:-1) car", 8, "≥ 0"),
        ("a (red:abc)", 8, "invalid weight 'abc'"),
        ("a (red:nan)", 8, "finite"),
        ("a (red:inf)", 8, "finite"),
        ("a red) car", 6, "unbalanced ')'"),
        ("a ((red:2) car", 3, "unbalanced '('"),
        ("a (:2) car", 3, "empty"),
        ("a (  :2) car", 3, "empty"),
        ("(a:(b:2))", 4, "invalid"),
    ],
)
def test_syntax_errors_name_column(text, column, fragment):
    with pytest.raises(PromptSyntaxError) as err:
        parse_weighted_prompt(text)
    assert err.value.column == column and fragment in str(err.value)
    assert isinstance(err.value, ValueError)


def test_weights_on_tokens(tok):
    tokens, log_w = tokenize_weighted(["a photo of a (red:1.5) car", "(a (b:2) c:0)"], tok)
    words = dict((w, ps) for w, ps in token_words(tokens[0], tok))
    assert math.isclose(log_w[0, words["red"][0]].item(), math.log(1.5), rel_tol=1e-6)
    assert log_w[0, words["car"][0]] == 0 and log_w[0, words["photo"][0]] == 0
    assert log_w[1, 1:4].tolist() == [-math.inf] * 3  # 0 × anything = 0 → -inf
    # a BPE piece covering chars of several weights takes their mean
    tokens, log_w = tokenize_weighted(["(red:2)dish"], tok)
    assert token_words(tokens[0], tok) == [("reddish", [1])]
    assert math.isclose(log_w[0, 1].exp().item(), (3 * 2 + 4 * 1) / 7, rel_tol=1e-6)


def test_multi_token_word_gets_weight_and_merges(tok):
    tokens, log_w = tokenize_weighted(["a (supercalifragilistic:3) dog"], tok)
    words = token_words(tokens[0], tok)
    assert [w for w, _ in words] == ["a", "supercalifragilistic", "dog"]
    pos = words[1][1]
    assert len(pos) > 1 and torch.allclose(log_w[0, pos], torch.full((len(pos),), math.log(3.0)))


def test_cleaning_changes_do_not_shift_weights(tok):
    # html unescape / ligature / curly quotes / whitespace collapse change lengths before the weighted phrase
    tokens, log_w = tokenize_weighted(["&amp;&amp;   \ufb01sh  \u2018x\u2019 (DOG:2) cat"], tok)
    weighted = {w for w, ps in token_words(tokens[0], tok) if log_w[0, ps[0]] != 0}
    assert weighted == {"dog"}


def test_vanishing_phrase_errors(tok):
    from open_clip.tokenizer import SimpleTokenizer

    canon = SimpleTokenizer(clean="canonicalize")
    with pytest.raises(ValueError, match="produces no tokens"):
        tokenize_weighted(["a photo (!!:2) of a dog"], canon)
    tokenize_weighted(["a photo (!!:2) of a dog"], tok)  # punctuation is a token with the default cleaning


def test_truncation_warns_with_prompt(tok):
    long = "word " * 100 + "(end:2)"
    with pytest.warns(UserWarning, match=r"prompt 'word word.*truncated.*'end'.*cut off"):
        tokens, log_w = tokenize_weighted([long], tok)
    assert tokens.shape == (1, 77) and tokens[0, -1] == tok.eot_token_id and log_w[0, -1] == 0
    assert torch.equal(tokens, tok([parse_weighted_prompt(long)[0]]))


def test_syntax_off_and_default_tokenizer():
    tokens, log_w = tokenize_weighted("a dog (a pet)", syntax=False)
    from open_clip.tokenizer import tokenize

    assert torch.equal(tokens, tokenize(["a dog (a pet)"])) and (log_w == 0).all()


def test_tiny_clip_tokenizer(tiny_clip):
    _, _, tokenizer = tiny_clip
    tokens, _ = tokenize_weighted(["a (tiny:2) test"], tokenizer)
    assert torch.equal(tokens, tokenizer(["a tiny test"]))
