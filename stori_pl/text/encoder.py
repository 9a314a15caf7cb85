"""SToRI's weighted text encoder (pure torch, no Lightning).

From block ``k`` on, self-attention becomes ``a[m, n] = w_n exp(q_m·k_n) / Σ_j w_j exp(q_m·k_j)``
(SToRI Eq. 4), i.e. ``log w_n`` is added to the attention logits of key column ``n``. We implement it
as an additive key bias on the attention mask that open_clip's blocks already take:
``causal[None] + log_w[:, None, :]`` — no monkeypatching, no copied blocks. All-zero log-weights give
exactly ``encode_text``.

Causal towers (CLIP) and bidirectional ones (open_clip's SigLIP / SigLIP2 ``TextTransformer``: no causal mask,
pooled at the last position) are both driven. In a bidirectional tower the weights apply to the real tokens
(every id not in the tokenizer's special ids); end and padding tokens keep log-weight 0, as the tower sees them
(open_clip's SigLIP towers do not mask padding, so the padding positions take part in every attention).

Training only re-runs what the weights can change (:class:`PreparedPrompts`): blocks before ``k``
once, the sequence cut after the last EOT (causal mask only: without one, every position reaches the pooled
one), and optionally chunks with gradient caching so that 10,000 prompts need the memory of one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
from torch import nn

from stori_pl.text.clip import TextTower, text_tower


class WeightedTextEncoder:
    """Encode token sequences with per-token weights (SToRI).

    Args:
        clip_model: A (frozen) open_clip ``CLIP`` or ``CustomTextCLIP``.
        start_block: First reweighted block, 1-indexed (paper: 7 of 12).
        special_ids: Token ids that are not words, for a bidirectional tower (default: the ids of the tokenizer
            :func:`~stori_pl.text.clip.load_clip` loaded, see :func:`~stori_pl.text.clip.text_tower`).

    Example:
        >>> enc = WeightedTextEncoder(model, start_block=7)
        >>> emb = enc(tokens, log_weights)            # [B, D], unnormalized like encode_text
        >>> prep = enc.prepare(tokens)                # training fast path
        >>> emb = prep.encode(log_weights, chunk_size=512)
    """

    def __init__(self, clip_model: nn.Module, start_block: int = 7, special_ids: Sequence[int] | None = None) -> None:
        self.model = clip_model
        self.tower: TextTower = text_tower(clip_model, special_ids)
        self.n_layers = len(self.tower.blocks)
        if not isinstance(start_block, int) or not 1 <= start_block <= self.n_layers:
            raise ValueError(
                f"start_block must be an int in 1..{self.n_layers} (1-indexed block of {self.tower.name}), "
                f"got {start_block!r}"
            )
        self.start_block = start_block
        self.context_length = self.tower.positional_embedding.shape[0]

    # ----------------------------------------------------------------------------------- helpers
    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L] -> [B]`` index of each row's EOT token (the pooled one of a causal tower).

        For a bidirectional tower: the position after the last real token (its end token, or ``L`` when the
        prompt fills the context).
        """
        if not self.tower.causal:
            real = self._real(tokens)  # [B, L]
            pos = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)  # [L]
            return (real * pos).amax(dim=-1)
        if self.tower.pool_type == "eos":
            return (tokens == self.tower.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def pool_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L] -> [B]`` the position each row's embedding is read from (open_clip's ``text_global_pool``)."""
        pool = self.tower.pool_type
        if pool in ("last", "first"):
            value = tokens.shape[1] - 1 if pool == "last" else 0
            return torch.full((tokens.shape[0],), value, dtype=torch.long, device=tokens.device)
        if pool == "eos":
            return (tokens == self.tower.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def sequence_length(self, tokens: torch.Tensor) -> int:
        """How many leading positions of ``tokens`` [B, L] can change the embeddings: up to the last EOT under a
        causal mask, all ``L`` in a bidirectional tower (its pooled position and its padding see everything)."""
        if not self.tower.causal:
            return tokens.shape[1]
        return int(self.eot_positions(tokens).max()) + 1

    def n_leading(self, tokens: torch.Tensor) -> int:
        """Special tokens before the first word of ``tokens`` [B, L]: 1 in a causal tower (CLIP's SOS), 0 or 1 in a
        bidirectional one (SigLIP's tokenizers add no start token). Soft prompts (CoOp) start after them."""
        if self.tower.causal:
            return 1
        return int(not bool(self._real(tokens[:1, :1]).all()))

    def _real(self, tokens: torch.Tensor) -> torch.Tensor:
        special = torch.tensor(sorted(self.tower.special_ids), dtype=tokens.dtype, device=tokens.device)
        return ~torch.isin(tokens, special)

    def token_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L] -> [B, L]`` bool, True on the real tokens x_1..x_N (between SOS and EOT in a causal tower;
        the ids that are not special tokens in a bidirectional one)."""
        if not self.tower.causal:
            return self._real(tokens)
        pos = torch.arange(tokens.shape[1], device=tokens.device)  # [L]
        return (pos[None] >= 1) & (pos[None] < self.eot_positions(tokens)[:, None])

    def plain_mask(self, n: int) -> torch.Tensor | None:
        """The tower's own attention mask over ``n`` positions: causal ``[n, n]``, or None (bidirectional)."""
        return self.tower.causal_mask[:n, :n] if self.tower.causal else None

    def _check(self, tokens: torch.Tensor, log_weights: torch.Tensor | None) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2:
            raise TypeError(f"tokens must be a LongTensor [B, L] from the tokenizer, got {_describe(tokens)}")
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"tokens have {tokens.shape[1]} positions; {self.tower.name}'s context is {self.context_length}")
        if log_weights is None:
            return
        if not isinstance(log_weights, torch.Tensor) or not log_weights.is_floating_point():
            raise TypeError(f"log_weights must be a float tensor [B, L], got {_describe(log_weights)}")
        if log_weights.shape[0] != tokens.shape[0] or log_weights.shape[1] < tokens.shape[1]:
            raise ValueError(
                f"log_weights {tuple(log_weights.shape)} do not match tokens {tuple(tokens.shape)} "
                "(one log-weight per token position)"
            )
        bad = torch.isnan(log_weights) | (log_weights == float("inf"))
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"log_weights contain NaN or +inf (first at prompt {row}, token {col})")

    # ------------------------------------------------------------------------- building blocks (public)
    def embed_tokens(self, tokens: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Token + positional embeddings ``[B, L] -> [B, L, W]``.

        Args:
            tokens: Token ids ``[B, L]``.
            token_embeddings: Optional ``[B, L, W]`` used instead of the lookup of ``tokens`` (soft prompts
                such as CoOp's context vectors); positional embeddings are still added.
        """
        t = self.tower
        x = t.token_embedding(tokens) if token_embeddings is None else token_embeddings
        return x.to(t.cast_dtype) + t.positional_embedding[: tokens.shape[1]].to(t.cast_dtype)

    def run_blocks(self, x: torch.Tensor, blocks: Sequence[nn.Module], mask: torch.Tensor | None) -> torch.Tensor:
        """Run ``blocks`` on batch-first ``x`` [B, L, W] with additive ``mask`` [L, L] or [B*H, L, L] (None: no
        mask, a bidirectional tower's own)."""
        if not self.tower.batch_first:
            x = x.transpose(0, 1)  # [L, B, W]
        for block in blocks:
            x = block(x, attn_mask=mask)
        return x if self.tower.batch_first else x.transpose(0, 1)

    def weighted_mask(self, key_bias: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` key biases -> ``[B*H, L, L]`` additive mask (causal + log w_n on column n)."""
        n = key_bias.shape[1]
        causal = self.tower.causal_mask[:n, :n].to(key_bias)  # [L, L]
        mask = causal[None] + key_bias[:, None, :]  # [B, L(query), L(key)]
        return mask.repeat_interleave(self.tower.num_heads, dim=0)  # [B*H, L, L], batch-major like MHA

    def suffix(self, x: torch.Tensor, tokens: torch.Tensor, log_weights: torch.Tensor | None) -> torch.Tensor:
        """Blocks ``start_block..n`` with SToRI's key bias, EOT pooling and projection: ``[B, L, W] -> [B, D]``.

        Args:
            x: Hidden states after :meth:`prefix`, ``[B, L, W]``.
            tokens: The token ids ``[B, L]`` (for EOT positions and which tokens are real).
            log_weights: ``[B, >=L]`` log-weights (only real tokens count) or None for the plain causal mask.
        """
        n = x.shape[1]
        eot = self.pool_positions(tokens)  # [B] the pooled position
        if log_weights is None:
            key_bias, mask = None, self.plain_mask(n)  # the tower's own mask: bitwise encode_text
        else:
            key_bias = torch.where(self.token_mask(tokens), log_weights[:, :n], 0.0)  # [B, L]
            mask = self.weighted_mask(key_bias)  # [B*H, L, L]
        blocks = self.tower.blocks[self.start_block - 1 :]
        x = self.run_blocks(x, blocks[:-1], mask)
        pooled = self._last_block_at_eot(blocks[-1], x, eot, key_bias, mask)  # [B, W]
        return self.tower.project(self.tower.ln_final(pooled))  # [B, D]

    def _last_block_at_eot(
        self,
        block: nn.Module,
        x: torch.Tensor,
        eot: torch.Tensor,
        key_bias: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The last block, evaluated only where it matters: the pooled (EOT) query row. ``[B, L, W] -> [B, W]``.

        Keys and values still come from every position; queries, attention output and MLP run for one
        row instead of L (the other rows never reach the embedding). Uses the block's own modules; blocks
        without a separate key/value input run in full with ``mask`` ([L, L] or [B*H, L, L]).
        """
        rows = torch.arange(x.shape[0], device=x.device)
        if not (self.tower.batch_first and hasattr(block, "attention") and not hasattr(block, "ln_1_kv")):
            return self.run_blocks(x, [block], mask)[rows, eot]
        causal = self.tower.causal_mask[: x.shape[1], : x.shape[1]].to(x.dtype)
        row_mask = causal[eot] if key_bias is None else causal[eot] + key_bias  # [B, L(key)]
        row_mask = row_mask[:, None, :].repeat_interleave(self.tower.num_heads, dim=0)  # [B*H, 1, L]
        if key_bias is None and not self.tower.causal:
            row_mask = None  # the tower's own (absent) mask
        q = x[rows, eot][:, None]  # [B, 1, W]
        kv = block.ln_1(x)  # [B, L, W]
        y = q + block.ls_1(block.attention(q_x=block.ln_1(q), k_x=kv, v_x=kv, attn_mask=row_mask))
        y = y + block.ls_2(block.mlp(block.ln_2(y)))  # [B, 1, W]
        return y[:, 0]

    def prefix(self, tokens: torch.Tensor, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks ``1..start_block-1`` (which no weight affects): ``[B, L] -> [B, L, W]`` hidden states.

        Args:
            tokens: Token ids ``[B, L]`` (``L`` may be cut after the last EOT).
            token_embeddings: Optional soft token embeddings ``[B, L, W]`` (see :meth:`embed_tokens`).
        """
        x = self.embed_tokens(tokens, token_embeddings)
        return self.run_blocks(x, self.tower.blocks[: self.start_block - 1], self.plain_mask(tokens.shape[1]))

    # ---------------------------------------------------------------------------------- public API
    def __call__(
        self,
        tokens: torch.Tensor,
        log_weights: torch.Tensor | None = None,
        bucket_size: int = 64,
        token_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode ``tokens`` [B, L] with per-token ``log_weights`` [B, L] -> unnormalized ``[B, D]``.

        Log-weights at SOS, EOT and padding are ignored; ``-inf`` masks a token out (weight 0).
        Prompts run in buckets of ``bucket_size`` of similar length, each cut after its last EOT
        (exact under the causal mask; only speed and memory change; a bidirectional tower runs every position).
        ``token_embeddings`` ``[B, L, W]``
        replaces the token lookup (soft prompts: CoOp's context vectors), differentiably.
        """
        self._check(tokens, log_weights)
        tokens = tokens.to(self.tower.positional_embedding.device)
        if log_weights is not None:
            log_weights = log_weights.to(tokens.device, torch.float32)

        def encode(index: torch.Tensor) -> torch.Tensor:
            n = self.sequence_length(tokens[index])
            t = tokens[index, :n]  # [C, n]
            soft = None if token_embeddings is None else token_embeddings[index.to(token_embeddings.device), :n]
            return self.suffix(self.prefix(t, soft), t, None if log_weights is None else log_weights[index, :n])

        return _in_buckets(encode, self.eot_positions(tokens), bucket_size)

    def prepare(self, tokens: torch.Tensor, bucket_size: int = 64) -> PreparedPrompts:
        """Fix a prompt set for training: run blocks before ``start_block`` once, in length buckets."""
        self._check(tokens, None)
        return PreparedPrompts(self, tokens, bucket_size)

    def encode_prompts(
        self, texts: Sequence[str], tokenizer: Callable | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Encode prompts written in the weight syntax, e.g. ``"a photo of a (red:1.5) car"``.

        Args:
            texts: Prompts; ``(phrase:w)`` weights a phrase (see :func:`stori_pl.parse_weighted_prompt`).
            tokenizer: open_clip tokenizer (default: the model's own).
            normalize: L2-normalize the embeddings.

        Returns:
            ``[B, D]`` embeddings.
        """
        from stori_pl.text.syntax import tokenize_weighted

        if tokenizer is None:
            import open_clip

            tokenizer = open_clip.get_tokenizer(getattr(self.model, "stori_model_name", "ViT-B-32"))
        tokens, log_weights = tokenize_weighted(list(texts), tokenizer)  # [B, L], [B, L]
        with torch.no_grad():
            emb = self(tokens, log_weights)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb


class PreparedPrompts(nn.Module):
    """A fixed prompt set with blocks before ``start_block`` run once (the training fast path).

    Prompts are sorted by length into buckets of ``bucket_size``; each bucket's prefix hidden states
    are cut after its own last EOT, so the cache and every later step scale with the real prompt
    lengths, not the 77-token context. Buffers are not saved in state dicts.

    Attributes:
        tokens: ``[P, L']`` tokens cut after the longest prompt's EOT (``L' = length``).
        mask: ``[P, L']`` bool, the trainable positions (real tokens between SOS and EOT).
        eot: ``[P]`` EOT positions.
    """

    def __init__(self, encoder: WeightedTextEncoder, tokens: torch.Tensor, bucket_size: int = 64) -> None:
        super().__init__()
        self.frozen = SimpleNamespace(encoder=encoder)  # a plain holder, not a submodule: CLIP belongs to its owner
        tokens = tokens.to(encoder.tower.positional_embedding.device)
        eot = encoder.eot_positions(tokens)  # [P]
        self.length = encoder.sequence_length(tokens)
        self.register_buffer("tokens", tokens[:, : self.length], persistent=False)  # [P, L']
        self.register_buffer("eot", eot, persistent=False)
        self.register_buffer("mask", encoder.token_mask(self.tokens), persistent=False)
        self.n_buckets = 0
        for index in torch.argsort(eot, stable=True).split(bucket_size):
            n = encoder.sequence_length(self.tokens[index])
            with torch.no_grad():
                hidden = encoder.prefix(self.tokens[index, :n])  # [C, n, W]
            self.register_buffer(f"index_{self.n_buckets}", index, persistent=False)
            self.register_buffer(f"hidden_{self.n_buckets}", hidden, persistent=False)
            self.n_buckets += 1

    @property
    def encoder(self) -> WeightedTextEncoder:
        """The encoder whose prefix blocks were run (held, not owned)."""
        return self.frozen.encoder

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def chunks(self, chunk_size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(index [C], hidden [C, n, W])`` pieces: the buckets, split further to ``chunk_size``."""
        out = []
        for i in range(self.n_buckets):
            index, hidden = getattr(self, f"index_{i}"), getattr(self, f"hidden_{i}")
            size = chunk_size or len(index)
            out += list(zip(index.split(size), hidden.split(size)))
        return out

    def encode(self, log_weights: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Embeddings ``[P, D]`` (unnormalized) for log-weights ``[P, L]`` or ``[P, L']``.

        Differentiable w.r.t. ``log_weights``. With ``chunk_size``, the forward pass keeps no graph and
        the backward pass re-runs one chunk at a time (gradient caching): the memory of one chunk,
        the same values and gradients.
        """
        self.encoder._check(self.tokens, log_weights)
        lw = log_weights[:, : self.length].to(self.eot.device, torch.float32)  # [P, L']
        chunks = self.chunks(chunk_size)
        if chunk_size is None or not lw.requires_grad:
            return _gather([self._encode_chunk(index, hidden, lw[index]) for index, hidden in chunks], chunks)
        return _ChunkedSuffix.apply(lw, self, chunks)

    def _encode_chunk(self, index: torch.Tensor, hidden: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        n = hidden.shape[1]
        return self.encoder.suffix(hidden, self.tokens[index, :n], log_weights[:, :n])  # [C, D]


class _ChunkedSuffix(torch.autograd.Function):
    """Gradient caching: forward without graph, backward re-runs one chunk at a time."""

    @staticmethod
    def forward(ctx, lw: torch.Tensor, prep: PreparedPrompts, chunks: list) -> torch.Tensor:
        ctx.prep, ctx.chunks = prep, chunks
        ctx.save_for_backward(lw)
        with torch.no_grad():
            return _gather([prep._encode_chunk(index, hidden, lw[index]) for index, hidden in chunks], chunks)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (lw,) = ctx.saved_tensors
        grad = torch.zeros_like(lw)  # [P, L']
        for index, hidden in ctx.chunks:
            with torch.enable_grad():
                part = lw[index].detach().requires_grad_(True)  # [C, L']
                emb = ctx.prep._encode_chunk(index, hidden, part)  # [C, D]
                (grad[index],) = torch.autograd.grad(emb, part, grad_out[index])
        return grad, None, None


def _gather(parts: list[torch.Tensor], chunks: list) -> torch.Tensor:
    """Concatenate per-chunk outputs and put rows back in prompt order."""
    order = torch.cat([index for index, _ in chunks])  # [P]
    return torch.cat(parts)[torch.argsort(order)]


def _in_buckets(encode: Callable[[torch.Tensor], torch.Tensor], eot: torch.Tensor, size: int) -> torch.Tensor:
    """Run ``encode(index)`` over buckets of ``size`` prompts sorted by EOT position; rows in input order."""
    if len(eot) <= size:
        return encode(torch.arange(len(eot), device=eot.device))
    order = torch.argsort(eot)  # [P]
    out = torch.cat([encode(index) for index in order.split(size)])  # [P, D] in sorted order
    return out[torch.argsort(order)]


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__
