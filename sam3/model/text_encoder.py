"""Text encoder of SAM3: CLIP's causal text transformer ("Learning Transferable Visual Models From
Natural Language Supervision", Sec. 2.4) over CLIP byte-level BPE tokens, resized to the detector
width.

Tokenisation is delegated to `open_clip_torch` (a pinned dependency that ships CLIP's
`bpe_simple_vocab_16e6` vocabulary and its reference tokenizer) instead of vendoring the vocabulary:
text is ftfy-fixed, HTML-unescaped, whitespace-collapsed and lower-cased, wrapped in start/end
tokens, padded with 0 and, when too long, truncated with the end token kept last.

Parameter names follow Meta's released checkpoint (`language_backbone.encoder.*`,
`language_backbone.resizer.*`). `encoder.text_projection` (CLIP's pooled projection) is kept for
that checkpoint only: SAM3 uses the per-token features, so it never receives a gradient.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)


class TextFeatures(NamedTuple):
    """Encoded prompts, sequence-first like the fusion encoder's inputs.

    Attributes:
        padding_mask: (B, L) bool, True at padding tokens (id 0).
        features: (L, B, d_model) per-token features after the resizer.
        token_embeds: (L, B, width) token embeddings before the transformer.
    """

    padding_mask: torch.Tensor
    features: torch.Tensor
    token_embeds: torch.Tensor


class ClipTokenizer:
    """CLIP BPE tokenizer with a fixed context length.

    Args:
        context_length: L, tokens per text including start and end tokens.
    """

    def __init__(self, *, context_length: int) -> None:
        from open_clip.tokenizer import SimpleTokenizer  # heavy import, only when a tokenizer is built

        if context_length < 2:
            raise ValueError(f"context_length must leave room for start and end tokens, got {context_length}")
        self.context_length = context_length
        self._bpe = SimpleTokenizer(context_length=context_length, clean="lower")
        self.sot_token_id = self._bpe.sot_token_id
        self.eot_token_id = self._bpe.eot_token_id
        self.vocab_size = self._bpe.vocab_size

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenise texts.

        Args:
            texts: B strings.

        Returns:
            (B, L) int64 ids: [SOT, tokens..., EOT, 0, ...]; longer texts keep their first L - 1
            ids with EOT written last.
        """
        if isinstance(texts, str):
            raise TypeError(f"expected a sequence of strings, got the single string {texts!r}; wrap it in a list")
        return self._bpe(list(texts), context_length=self.context_length)


class TextTransformer(nn.Module):
    """CLIP text transformer: token + position embeddings, causal pre-norm blocks, final LayerNorm.

    Args:
        context_length: L, the number of position embeddings.
        vocab_size: token vocabulary size.
        width: token width.
        heads: attention heads.
        layers: number of blocks.
        output_dim: output width of the (unused) pooled projection `text_projection`.
        mlp_ratio: MLP hidden width / width.
        use_act_checkpoint: recompute each block's activations in backward while training.
    """

    def __init__(
        self,
        *,
        context_length: int,
        vocab_size: int,
        width: int,
        heads: int,
        layers: int,
        output_dim: int,
        mlp_ratio: float = 4.0,
        use_act_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.width = width
        self.use_act_checkpoint = use_act_checkpoint
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = _Resblocks(width, heads, layers, mlp_ratio)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self._init_weights(layers)

    def _init_weights(self, layers: int) -> None:
        # CLIP's initialisation (open_clip `TextTransformer.init_parameters`).
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = self.width**-0.5 * (2 * layers) ** -0.5
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.width**-0.5)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Encode token ids.

        Args:
            token_ids: (B, L) int64, L <= context_length.

        Returns:
            (B, L, width) per-token features after the final LayerNorm.
        """
        seq_len = token_ids.shape[1]
        if seq_len > self.context_length:
            raise ValueError(f"{seq_len} tokens exceed the context length {self.context_length}")
        x = self.token_embedding(token_ids) + self.positional_embedding[:seq_len]  # (B, L, width)
        for block in self.transformer.resblocks:
            if self.use_act_checkpoint and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_final(x)


class TextEncoder(nn.Module):
    """Tokenizer + text transformer + linear resizer to the detector width.

    Args:
        tokenizer: maps B strings to (B, L) ids with 0 as padding.
        encoder: the text transformer.
        d_model: output width of `resizer`.
    """

    def __init__(self, *, tokenizer: ClipTokenizer, encoder: TextTransformer, d_model: int) -> None:
        super().__init__()
        if tokenizer.context_length != encoder.context_length:
            raise ValueError(
                f"tokenizer context length {tokenizer.context_length} != text transformer context length "
                f"{encoder.context_length}"
            )
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.resizer = nn.Linear(encoder.width, d_model)

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        """Tokenise and encode B texts (see `TextFeatures` for shapes)."""
        token_ids = self.tokenizer(texts).to(self.resizer.weight.device)
        return self.encode_tokens(token_ids)

    def encode_tokens(self, token_ids: torch.Tensor) -> TextFeatures:
        """Encode (B, L) int64 token ids, 0 being padding (see `TextFeatures` for shapes)."""
        token_embeds = self.encoder.token_embedding(token_ids)  # (B, L, width)
        tokens = self.encoder(token_ids)  # (B, L, width)
        features = self.resizer(tokens.transpose(0, 1))  # (L, B, d_model)
        return TextFeatures(token_ids == 0, features, token_embeds.transpose(0, 1))


class _Resblocks(nn.Module):
    """Holder of the blocks, for the checkpoint's `transformer.resblocks.*` names."""

    def __init__(self, width: int, heads: int, layers: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([_CausalBlock(width, heads, mlp_ratio) for _ in range(layers)])


class _CausalBlock(nn.Module):
    """Pre-norm block with causal self-attention and a GELU MLP: (B, L, width) -> (B, L, width)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with packed input projection (`in_proj_*`, `out_proj`)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, width) -> (B, L, width); token i attends to tokens 0..i."""
        b, seq_len, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).reshape(b, seq_len, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, L, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, L, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(b, seq_len, width))  # (B, L, width)
