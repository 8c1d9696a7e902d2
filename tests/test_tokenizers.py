"""Character and word tokenizers: round trips, unknown input, save/load, damaged files."""

from __future__ import annotations

import json

import pytest

from simple_llm import CharTokenizer, TokenizerError, WordTokenizer, load_tokenizer


def test_char_round_trip_and_vocabulary():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    tok = CharTokenizer.train(text)
    assert tok.vocab_size == len(set(text))
    assert tok.tokens == sorted(set(text))  # nanoGPT's shakespeare_char order
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="'Z' is not in"):
        tok.encode("Zebra")


def test_word_tokenizer_specials_and_unknown():
    tok = WordTokenizer.train("こんにちは 世界\nHello world\n")
    assert tok.tokens[:2] == ["<unk>", "<eos>"] and tok.eos_id == 1
    assert tok.encode("Hello 世界") == [tok.ids["Hello"], tok.ids["世界"]]
    assert tok.encode("Hello there") == [tok.ids["Hello"], 0]
    assert tok.decode(tok.encode("こんにちは  世界 ")) == "こんにちは 世界"
    for bad in (99, tok.vocab_size, -1):  # the first id past the end, too
        with pytest.raises(ValueError, match="outside this vocabulary"):
            tok.decode([bad])
    assert tok.decode([tok.vocab_size - 1]) == tok.tokens[-1]


@pytest.mark.parametrize(
    "make", [lambda: CharTokenizer.train("abc\n", specials=["<eos>"]), lambda: WordTokenizer.train("a b c")]
)
def test_save_load_to_dir_and_file(tmp_path, make):
    tok = make()
    path = tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    assert json.loads(path.read_text(encoding="utf-8"))["kind"] == tok.kind
    for where in (tmp_path, path):
        again = load_tokenizer(where)
        assert type(again) is type(tok) and again.tokens == tok.tokens and again.eos_id == tok.eos_id
    assert type(tok).load(tmp_path).tokens == tok.tokens


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "is damaged"),
        ('{"kind": "klingon"}', "names no known kind"),
        ('{"kind": "word", "tokens": [1, 2]}', "is damaged"),
        ('{"kind": "char", "tokens": ["a", "a"]}', "duplicate"),
        ("[1, 2, 3]", "not a JSON object"),
    ],
)
def test_damaged_tokenizer_file_is_one_clear_error(tmp_path, content, fragment):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match=fragment) as info:
        load_tokenizer(tmp_path)
    assert "\n" not in str(info.value)


def test_missing_tokenizer(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer in"):
        load_tokenizer(tmp_path)
