"""Tokenizer ids against the official ones and an independent CLIP BPE reader; text encoder shapes,
padding mask and causality."""

from __future__ import annotations

import copy
import gzip
import html
from itertools import pairwise
from pathlib import Path

import ftfy
import pytest
import regex
import torch
from hydra.utils import instantiate

from sam3.model.text_encoder import ClipTokenizer
from sam3.model_builder import model_config

CONTEXT = 32
PHRASES = [
    "dog",
    "A Red Circle",
    "person riding a bicycle, wearing a helmet!",
    "  lots   of\twhite\nspace  ",
    "it's the cat's toy (don't touch) -- ok?",
    "café naïve façade Ünïcödé",
    "日本語のテキスト と 中文",
    "emoji 🐶🚲 and symbols ©®™ ½",
    "html &amp; entities &lt;b&gt; and mojibake â€œquotedâ€\x9d",
    "numbers 1234567 and 3.14159 and v2.0",
    "",
    "a " * 40 + "very long description that cannot fit in thirty-two tokens at all",
]


class ReferenceBPE:
    """Small independent reader of CLIP's BPE vocabulary (the scheme of OpenAI CLIP's tokenizer)."""

    def __init__(self, vocab_path: Path) -> None:
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        extra = [b for b in range(256) if b not in printable]
        self.byte_to_char = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}
        lines = gzip.decompress(vocab_path.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        # Vocabulary order: the 256 byte symbols in the order CLIP lists them (printable bytes first).
        symbols = [self.byte_to_char[b] for b in printable + extra]
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.rank = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.ids["<start_of_text>"], self.ids["<end_of_text>"]
        self.pattern = regex.compile(
            r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE,
        )

    def _merge(self, word: list[str]) -> list[str]:
        while len(word) > 1:
            pairs = [(self.rank.get((a, b), float("inf")), i) for i, (a, b) in enumerate(pairwise(word))]
            best_rank, _ = min(pairs)
            if best_rank == float("inf"):
                break
            first, second = next((word[i], word[i + 1]) for r, i in pairs if r == best_rank)
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str, context: int) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = [self.sot]
        for piece in self.pattern.findall(text):
            chars = [self.byte_to_char[b] for b in piece.encode("utf-8")]
            chars[-1] += "</w>"
            ids += [self.ids[t] for t in self._merge(chars)]
        ids.append(self.eot)
        if len(ids) > context:
            ids = ids[: context - 1] + [self.eot]
        return ids + [0] * (context - len(ids))


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer(context_length=CONTEXT)


@pytest.fixture(scope="module")
def text_encoder():
    torch.manual_seed(0)
    return instantiate(model_config("tiny").backbone.language_backbone).eval()


def test_dog_gives_the_official_ids(tokenizer, reference_dir):
    reference = torch.load(reference_dir / "sam3_image_seeded_outputs.pt", weights_only=True)["tensors"]
    assert torch.equal(tokenizer(["dog"]), reference["text/token_ids"])
    assert tokenizer(["dog"])[0, :4].tolist() == [49406, 1929, 49407, 0]


def test_ids_equal_an_independent_bpe_reader(tokenizer):
    from open_clip.tokenizer import default_bpe

    reference = ReferenceBPE(Path(default_bpe()))
    ids = tokenizer(PHRASES)
    assert ids.shape == (len(PHRASES), CONTEXT) and ids.dtype == torch.int64
    for phrase, row in zip(PHRASES, ids, strict=True):
        assert row.tolist() == reference.encode(phrase, CONTEXT), phrase


def test_long_text_is_truncated_with_end_token_last(tokenizer):
    row = tokenizer([PHRASES[-1]])[0]
    assert row[0] == tokenizer.sot_token_id and row[-1] == tokenizer.eot_token_id
    assert (row != 0).all()


def test_single_string_is_rejected(tokenizer):
    with pytest.raises(TypeError, match="wrap it in a list"):
        tokenizer("dog")


def test_text_features_shapes_and_padding_mask(text_encoder):
    out = text_encoder(["dog", "a red circle"])
    assert out.features.shape == (CONTEXT, 2, 64)
    assert out.token_embeds.shape == (CONTEXT, 2, 64)
    assert out.padding_mask.dtype == torch.bool
    assert out.padding_mask[0].tolist() == [False] * 3 + [True] * (CONTEXT - 3)
    assert out.padding_mask[1].tolist() == [False] * 5 + [True] * (CONTEXT - 5)
    assert torch.isfinite(out.features).all()


def test_attention_is_causal(text_encoder):
    ids = text_encoder.tokenizer(["a red circle", "a red square"])
    assert torch.equal(ids[0, :3], ids[1, :3]) and ids[0, 3] != ids[1, 3]
    with torch.no_grad():
        features = text_encoder.encode_tokens(ids).features  # (L, B, C)
    torch.testing.assert_close(features[:3, 0], features[:3, 1], rtol=0, atol=0)
    assert not torch.allclose(features[3, 0], features[3, 1])


def test_activation_checkpointing_gives_identical_gradients(text_encoder):
    plain = copy.deepcopy(text_encoder).train()
    ckpt = copy.deepcopy(text_encoder).train()
    ckpt.encoder.use_act_checkpoint = True
    for model in (plain, ckpt):
        model(["a red circle"]).features.square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        if name == "encoder.text_projection":
            assert a.grad is None and b.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, msg=name)
