"""Weighted prompt syntax ``(phrase:1.5)``, char-span → BPE token alignment, and token → word display.

Syntax (A1111 / Compel style):

- ``(phrase:w)`` gives every token of ``phrase`` the weight ``w`` (a finite float ≥ 0);
- groups nest and their weights multiply: ``(a (b:2) c:1.5)`` → ``a`` 1.5, ``b`` 3.0, ``c`` 1.5;
- ``\\(``, ``\\)``, ``\\:`` and ``\\\\`` are literal ``(``, ``)``, ``:`` and ``\\``; text outside groups has weight 1;
- inside a group the *last* colon starts the weight, so ``(16:9 screen:2)`` weights ``16:9 screen``.

Alignment: the plain text is tokenized exactly like open_clip's ``SimpleTokenizer`` does (same cleaning, same
BPE, same truncation), while tracking which characters each BPE piece covers; a piece takes the mean weight of
the characters it covers. SOS, EOT and padding keep weight 1 (log-weight 0).

SentencePiece-style tokenizers (open_clip's ``HFTokenizer`` and ``SigLipTokenizer``, those of SigLIP / SigLIP2: a
fast Hugging Face tokenizer inside) are aligned through the tokenizer's own character offsets: the same call as
open_clip makes (cleaning, ``max_length`` padding, truncation) with ``return_offsets_mapping``; a piece takes the
mean weight of the non-space characters it covers; special tokens (end, padding) keep weight 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import regex
import torch

__all__ = [
    "PromptSyntaxError",
    "parse_weighted_prompt",
    "escape_prompt",
    "tokenize_weighted",
    "token_words",
    "default_tokenizer",
]

_ESCAPABLE = "()\\:"


class PromptSyntaxError(ValueError):
    """Malformed weighted prompt. ``column`` is the 1-based column of the offending character."""

    def __init__(self, message: str, text: str, column: int):
        self.text, self.column = text, column
        pointer = " " * (column - 1) + "^"
        super().__init__(f"{message} at column {column}:\n  {text}\n  {pointer}")


@dataclass(frozen=True)
class Phrase:
    """One ``(…:w)`` group: plain-text range ``[start, end)`` and its own (not multiplied) weight."""

    start: int
    end: int
    weight: float
    source: str  # the group's plain text, for messages


def escape_prompt(text: str) -> str:
    """Escape ``( ) : \\`` so that ``text`` parses to itself with weight 1 everywhere."""
    return "".join("\\" + c if c in _ESCAPABLE else c for c in text)


def _parse(text: str) -> tuple[str, list[Phrase]]:
    out: list[str] = []  # plain characters
    literal: list[bool] = []  # True where the char came from an escape (never a weight colon)
    cols: list[int] = []  # 1-based source column of each plain char
    stack: list[tuple[int, int, int]] = []  # (plain start, source column of "(", number of phrases then)
    phrases: list[Phrase] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            out.append(text[i + 1]), literal.append(True), cols.append(i + 2)
            i += 2
            continue
        if c == "(":
            stack.append((len(out), i + 1, len(phrases)))
        elif c == ")":
            if not stack:
                raise PromptSyntaxError("unbalanced ')' (no matching '('; write \\) for a literal one)", text, i + 1)
            start, open_col, n_before = stack.pop()
            colon = next((j for j in range(len(out) - 1, start - 1, -1) if out[j] == ":" and not literal[j]), None)
            if colon is None:
                raise PromptSyntaxError(
                    "missing weight: write (phrase:1.5), or \\( \\) for literal parentheses", text, i + 1
                )
            number = "".join(out[colon + 1 :]).strip()
            num_col = cols[colon] + 1
            inner = [p for p in phrases[n_before:] if p.end > colon]
            if not number or inner:
                raise PromptSyntaxError("missing or invalid weight after ':'", text, num_col)
            try:
                weight = float(number)
            except ValueError:
                raise PromptSyntaxError(f"invalid weight {number!r} (expected a number ≥ 0)", text, num_col) from None
            if not math.isfinite(weight) or weight < 0:
                raise PromptSyntaxError(f"weight must be a finite number ≥ 0, got {number!r}", text, num_col)
            del out[colon:], literal[colon:], cols[colon:]
            if colon == start or not "".join(out[start:]).strip():
                raise PromptSyntaxError("empty weighted phrase", text, open_col)
            phrases.append(Phrase(start, colon, weight, "".join(out[start:colon])))
        else:
            out.append(c), literal.append(False), cols.append(i + 1)
        i += 1
    if stack:
        raise PromptSyntaxError("unbalanced '(' (never closed; write \\( for a literal one)", text, stack[-1][1])
    return "".join(out), phrases


def _char_weights(n: int, phrases: Sequence[Phrase]) -> list[float]:
    weights = [1.0] * n
    for p in phrases:
        for j in range(p.start, p.end):
            weights[j] *= p.weight
    return weights


def _runs(weights: Sequence[float]) -> list[tuple[int, int, float]]:
    spans: list[tuple[int, int, float]] = []
    for j, w in enumerate(weights):
        if spans and spans[-1][2] == w:
            spans[-1] = (spans[-1][0], j + 1, w)
        else:
            spans.append((j, j + 1, w))
    return spans


def parse_weighted_prompt(text: str) -> tuple[str, list[tuple[int, int, float]]]:
    """Parse the weight syntax.

    Args:
        text: Prompt such as ``"a photo of a (red:1.5) car"``.

    Returns:
        ``(plain_text, spans)``: the text without markup and ``(start, end, weight)`` character spans of constant
        weight that cover ``plain_text`` in order (empty list for an empty text).

    Raises:
        PromptSyntaxError: unbalanced parentheses, missing/invalid/negative/non-finite weight, empty phrase;
            ``.column`` is the 1-based column in ``text``.
    """
    plain, phrases = _parse(text)
    return plain, _runs(_char_weights(len(plain), phrases))


def default_tokenizer():
    """open_clip's default ``SimpleTokenizer`` (context length 77)."""
    from open_clip.tokenizer import _tokenizer

    return _tokenizer


def hf_parts(tokenizer):
    """``(fast Hugging Face tokenizer, cleaning function)`` of an open_clip ``HFTokenizer`` / ``SigLipTokenizer``
    (SentencePiece-style), or None for other tokenizers."""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is None or not getattr(inner, "is_fast", False):
        return None
    if getattr(tokenizer, "tokenizer_mode", "") == "clips":
        raise TypeError("weighted prompts do not support HFTokenizer(tokenizer_mode='clips')")
    clean = getattr(tokenizer, "clean_fn", None)
    if clean is None:  # SigLipTokenizer cleans with canonicalize_text(basic_clean(text)) (open_clip/tokenizer.py)
        from open_clip.tokenizer import basic_clean, canonicalize_text

        def clean(text: str) -> str:
            return canonicalize_text(basic_clean(text))
    return inner, clean


def _tokenize_one_hf(text: str, tokenizer, context_length: int, syntax: bool):
    """``(ids, weights)`` of one prompt with a SentencePiece-style tokenizer (see the module docstring)."""
    inner, clean = hf_parts(tokenizer)
    plain, phrases = _parse(text) if syntax else (text, [])
    spans = _runs(_char_weights(len(plain), phrases))
    cleaned = clean(plain)
    enc = inner(cleaned, max_length=context_length, padding="max_length", truncation=True,
                return_offsets_mapping=True, return_special_tokens_mask=True)
    ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
    if getattr(tokenizer, "strip_sep_token", False):
        ids = [0 if i == inner.sep_token_id else i for i in ids]
    shim = type("Clean", (), {"clean_fn": staticmethod(clean)})
    cw = _cleaned_weights(shim, plain, cleaned, spans) if len(spans) > 1 else None
    weights = []
    for (s, e), is_special in zip(offsets, special):
        if is_special or e <= s or not spans:
            weights.append(1.0)
            continue
        if cw is None:
            weights.append(spans[0][2])
            continue
        chars = [j for j in range(s, e) if not cleaned[j].isspace()] or list(range(s, e))
        weights.append(sum(cw[j] for j in chars) / len(chars))
    for p in phrases:
        a, b = len(clean(plain[: p.start])), len(clean(plain[: p.end]))
        if b <= a or not any(s < b and e > a for (s, e), sp in zip(offsets, special) if not sp and e > s):
            full = inner(cleaned, return_offsets_mapping=True)["offset_mapping"]
            cut = b > a and any(s < b and e > a for s, e in full if e > s)
            if not cut:
                raise ValueError(f"weighted phrase {p.source!r} (weight {p.weight:g}) in prompt {text!r} produces no "
                                 "tokens after the tokenizer's text cleaning; weight a phrase with visible words")
    from stori_pl.text.clip import check_empty, shorten, warn_prompt

    check_empty(plain, stacklevel=5)
    n_full = len(inner(cleaned)["input_ids"])
    if n_full > context_length:
        warn_prompt(f"prompt {shorten(text)} has {n_full} tokens, more than the context length {context_length}; "
                    "truncated", stacklevel=4)
    return ids, weights


def _check_tokenizer(tokenizer) -> None:
    needed = ("bpe", "pat", "encoder", "byte_encoder", "clean_fn", "sot_token_id", "eot_token_id")
    if not all(hasattr(tokenizer, a) for a in needed):
        raise TypeError(
            f"{type(tokenizer).__name__} is not supported: weighted prompts need open_clip's BPE SimpleTokenizer"
        )


def _encode_with_offsets(tokenizer, cleaned: str) -> list[tuple[int, int, int]]:
    """``tokenizer.encode`` on already-cleaned text, with the ``[start, end)`` chars of ``cleaned`` per piece."""
    pieces: list[tuple[int, int, int]] = []
    for m in regex.finditer(tokenizer.pat, cleaned):
        word = m.group()
        raw = word.encode("utf-8")
        byte_to_char = [k for k, ch in enumerate(word) for _ in ch.encode("utf-8")]
        enc = "".join(tokenizer.byte_encoder[b] for b in raw)
        pos = 0  # byte offset in the word
        for piece in tokenizer.bpe(enc).split(" "):
            n_bytes = len(piece) - 4 if piece.endswith("</w>") else len(piece)
            first, last = byte_to_char[pos], byte_to_char[pos + n_bytes - 1]
            pieces.append((tokenizer.encoder[piece], m.start() + first, m.start() + last + 1))
            pos += n_bytes
    return pieces


def _cleaned_weights(tokenizer, plain: str, cleaned: str, spans) -> list[float]:
    """Weight of each char of ``cleaned = clean_fn(plain)``; segment boundaries via cleaned prefix lengths."""
    weights = [1.0] * len(cleaned)
    prev = 0
    for k, (start, end, w) in enumerate(spans):
        stop = len(cleaned) if k == len(spans) - 1 else len(tokenizer.clean_fn(plain[:end]))
        stop = min(max(stop, prev), len(cleaned))
        weights[prev:stop] = [w] * (stop - prev)
        prev = stop
    return weights


def _tokenize_one(text: str, tokenizer, context_length: int, syntax: bool):
    plain, phrases = _parse(text) if syntax else (text, [])
    spans = _runs(_char_weights(len(plain), phrases))
    cleaned = tokenizer.clean_fn(plain)
    pieces = _encode_with_offsets(tokenizer, cleaned)
    cw = _cleaned_weights(tokenizer, plain, cleaned, spans) if len(spans) > 1 else None
    ids = [tokenizer.sot_token_id] + [p[0] for p in pieces] + [tokenizer.eot_token_id]
    weights = [1.0] + [
        (sum(cw[s:e]) / (e - s) if cw is not None else spans[0][2]) for _, s, e in pieces
    ] + [1.0]
    covered = []  # per phrase: indices into pieces (used for vanish / truncation checks)
    if phrases:
        for p in phrases:
            a = len(tokenizer.clean_fn(plain[: p.start]))
            b = len(tokenizer.clean_fn(plain[: p.end]))
            hit = [k for k, (_, s, e) in enumerate(pieces) if s < b and e > a] if b > a else []
            if not hit:
                raise ValueError(
                    f"weighted phrase {p.source!r} (weight {p.weight:g}) in prompt {text!r} produces no tokens "
                    "after the tokenizer's text cleaning; weight a phrase with visible words"
                )
            covered.append((p, hit))
    from stori_pl.text.clip import check_empty, shorten, warn_prompt

    check_empty(plain, stacklevel=5)
    if len(ids) > context_length:
        lost = [p.source for p, hit in covered if min(hit) + 1 >= context_length - 1]
        msg = f"prompt {shorten(text)} has {len(ids)} tokens (with SOS/EOT), more than the context length {context_length}; truncated"
        warn_prompt(msg + (f"; weighted phrase(s) {lost} are cut off" if lost else ""), stacklevel=4)
        ids, weights = ids[:context_length], weights[:context_length]
        ids[-1], weights[-1] = tokenizer.eot_token_id, 1.0
    return ids, weights


def tokenize_weighted(
    texts: str | Sequence[str],
    tokenizer=None,
    context_length: int | None = None,
    syntax: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize weighted prompts exactly like open_clip and give each BPE token its weight.

    Args:
        texts: One prompt or a list, in the ``(phrase:w)`` syntax.
        tokenizer: open_clip ``SimpleTokenizer`` (as returned by :func:`stori_pl.load_clip`), or a
            SentencePiece-style ``HFTokenizer`` / ``SigLipTokenizer`` (SigLIP, SigLIP2); None → default.
        context_length: Row length; None → ``tokenizer.context_length`` (77; SigLIP: 64).
        syntax: False treats every text literally (weight 1 everywhere; parentheses are plain characters).

    Returns:
        ``(tokens [B, L] long, log_weights [B, L] float32)``. ``tokens`` equals ``tokenizer(plain_texts)``;
        log-weights are ``log(w)`` (``-inf`` for weight 0) on the real tokens and 0 at SOS, EOT and padding
        (every special token of a SentencePiece-style tokenizer).

    Raises:
        PromptSyntaxError: bad syntax. ValueError: a weighted phrase vanishes under tokenization.

    Warns:
        UserWarning: naming the prompt, when it is longer than the context and gets truncated.
    """
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    one = _tokenize_one_hf if hf_parts(tokenizer) is not None else _tokenize_one
    if one is _tokenize_one:
        _check_tokenizer(tokenizer)
    texts = [texts] if isinstance(texts, str) else list(texts)
    length = int(context_length or getattr(tokenizer, "context_length", None) or 77)
    tokens = torch.zeros(len(texts), length, dtype=torch.long)  # [B, L]
    log_w = torch.zeros(len(texts), length, dtype=torch.float32)  # [B, L]
    for row, text in enumerate(texts):
        ids, weights = one(text, tokenizer, length, syntax)
        tokens[row, : len(ids)] = torch.tensor(ids)
        w = torch.tensor(weights, dtype=torch.float64)
        log_w[row, : len(ids)] = torch.where(w > 0, w.clamp_min(1e-300).log(), -math.inf).float()
    return tokens, log_w


def token_words(tokens_row: Sequence[int] | torch.Tensor, tokenizer=None) -> list[tuple[str, list[int]]]:
    """Group the real tokens of one tokenized row into words (sub-word BPE pieces merged).

    Args:
        tokens_row: One row ``[L]`` of token ids, ``[SOS, x_1 … x_N, EOT, 0 …]``.
        tokenizer: open_clip ``SimpleTokenizer``; None → default.

    Returns:
        ``[(word, positions)]`` in order, where ``positions`` index ``tokens_row`` (SOS is position 0).
        Punctuation pieces are words of their own (``"dog,"`` → ``dog``, ``,``).
    """
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    row = tokens_row.tolist() if isinstance(tokens_row, torch.Tensor) else list(tokens_row)
    if hf_parts(tokenizer) is not None or hasattr(tokenizer, "word_of"):
        return _pieces_to_words(row, tokenizer)
    _check_tokenizer(tokenizer)
    decoder = getattr(tokenizer, "decoder", None) or {v: k for k, v in tokenizer.encoder.items()}
    byte_decoder = getattr(tokenizer, "byte_decoder", None) or {v: k for k, v in tokenizer.byte_encoder.items()}
    start = 1 if row and row[0] == tokenizer.sot_token_id else 0
    words: list[tuple[str, list[int]]] = []
    buf, pos = "", []
    for i in range(start, len(row)):
        if row[i] == tokenizer.eot_token_id:
            break
        piece = decoder[row[i]]
        end = piece.endswith("</w>")
        buf, pos = buf + (piece[:-4] if end else piece), pos + [i]
        if end:
            words.append((bytes(byte_decoder[c] for c in buf).decode("utf-8", errors="replace"), pos))
            buf, pos = "", []
    if pos:  # a word cut by truncation
        words.append((bytes(byte_decoder[c] for c in buf).decode("utf-8", errors="replace"), pos))
    return words


def _pieces_to_words(row: list[int], tokenizer) -> list[tuple[str, list[int]]]:
    """:func:`token_words` of a SentencePiece-style row: a piece starting with ``▁`` starts a word, special tokens
    are skipped (a :class:`~stori_pl.text.clip.StandInTokenizer` row: one word per token)."""
    if hasattr(tokenizer, "word_of"):
        special = {tokenizer.pad_token_id, tokenizer.eos_token_id}
        return [(tokenizer.word_of(i), [k]) for k, i in enumerate(row) if i not in special]
    inner = hf_parts(tokenizer)[0]
    special = set(inner.all_special_ids)
    words: list[tuple[str, list[int]]] = []
    for k, (i, piece) in enumerate(zip(row, inner.convert_ids_to_tokens(row))):
        if i in special:
            continue
        text = piece.replace("\u2581", " ")
        if not words or text.startswith(" "):
            words.append((text.lstrip(), [k]))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + [k])
    return [(w, pos) for w, pos in words if w]


def piece_texts(ids: Sequence[int], tokenizer) -> list[str]:
    """The pieces of SentencePiece-style token ids as the tokenizer writes them (``▁`` word starts), or the
    stand-in tokenizer's words."""
    if hasattr(tokenizer, "word_of"):
        return [tokenizer.word_of(i) for i in ids]
    return hf_parts(tokenizer)[0].convert_ids_to_tokens([int(i) for i in ids])
