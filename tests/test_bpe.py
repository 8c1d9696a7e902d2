"""Byte-level BPE trained here: a hand-worked example, round trips on any text (hypothesis), save and
load, special tokens, and the pre-tokenisation patterns."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import corpus

from simple_llm import fallback, kernels, load_tokenizer
from simple_llm.bpe import ENDOFTEXT, BPETokenizer
from simple_llm.bpe_merges import learn_merges

SAMPLE = "hello hello world, hello there! 日本語のテキスト、日本語の文。 ta ta ta\n\n  spaces   and\ttabs\n"
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)


def test_learn_merges_by_hand():
    """Wikipedia's example, 'aaabdaaabac', with a=97, b=98, c=99, d=100.

    (97, 97) is the most frequent pair (4 overlapping times) -> 256, merged left to right:
    [256, 97, 98, 100, 256, 97, 98, 97, 99]. Now (256, 97) and (97, 98) occur twice each; the tie
    goes to the smaller pair, (97, 98) -> 257: [256, 257, 100, 256, 257, 97, 99]. Then (256, 257)
    occurs twice -> 258, and no pair occurs twice after that.
    """
    assert learn_merges([list(b"aaabdaaabac")], [1], 10) == [(97, 97), (97, 98), (256, 257)]


def test_merge_piece_prefers_the_lowest_rank(backend):
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"bc": 257, b"abc": 258}
    assert kernels.merge_piece(b"abc", ranks) == [258]  # ab first (rank 256), then ab+c
    assert kernels.merge_piece(b"bcab", ranks) == [256 + 1, 256]  # bc and ab; 'bcab' is no token
    assert kernels.merge_piece(b"", ranks) == [] and kernels.merge_piece(b"c", ranks) == [99]
    # a pair that changed after it was queued: bc (257) is gone once cd (256) merges, and b + cd
    # (bcd, 259) must wait its own turn, after ab (258)
    ranks = {bytes([b]): b for b in range(256)} | {b"cd": 256, b"bc": 257, b"ab": 258, b"bcd": 259}
    assert kernels.merge_piece(b"abcd", ranks) == [258, 256]


def test_merge_piece_refuses_what_it_cannot_read(backend):
    ranks = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match="piece must be bytes"):
        kernels.merge_piece("abc", ranks)
    with pytest.raises(ValueError, match="ranks must be a dict"):
        kernels.merge_piece(b"abc", list(ranks))
    with pytest.raises(KeyError):
        kernels.merge_piece(b"ab", {b"a": 0})  # a byte without a token


def naive_merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """BPE as written in the papers: rescan every pair, merge the leftmost of the lowest rank."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while True:
        found = [(ranks[a + b], i) for i, (a, b) in enumerate(pairwise(parts)) if a + b in ranks]
        if not found:
            return [ranks[p] for p in parts]
        _, i = min(found)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def merge_pieces():
    return [fallback.merge_piece, pytest.param("compiled", id="compiled")]


def merge_of(which):
    """The fallback's merge_piece, or the compiled one (skipped, or failed under
    SIMPLE_LLM_REQUIRE_COMPILED, when it is not built)."""
    from support import compiled_kernels

    return compiled_kernels().merge_piece if which == "compiled" else which


@pytest.mark.parametrize("merge", merge_pieces())
@settings(max_examples=300, deadline=None)
@given(piece=st.binary(max_size=40), tokens=st.lists(st.binary(min_size=2, max_size=4), max_size=30), rnd=st.randoms())
def test_merge_piece_is_plain_bpe(merge, piece, tokens, rnd):
    """The heap of merge_piece against the rescanning definition, on a small alphabet so that merges,
    ties and overlapping pairs are common."""
    piece = bytes(b % 3 + 97 for b in piece)
    ranks = {bytes([b]): b for b in range(256)}
    for t in tokens:  # rank order random; every token made of two existing ones, as BPE's are
        t = bytes(b % 3 + 97 for b in t)
        cut = rnd.randrange(1, len(t))
        if t[:cut] in ranks and t[cut:] in ranks:
            ranks.setdefault(t, 256 + len(ranks))
    assert merge_of(merge)(piece, ranks) == naive_merge(piece, ranks)


def test_a_long_word_is_not_quadratic(backend):
    """160 kB of letters without a space is one piece: rescanning took minutes; the heap, a moment."""
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abab": 257, b"ba": 258}
    assert kernels.merge_piece(b"ab" * 80_000, ranks) == [257] * 40_000
    assert kernels.merge_piece(b"b" + b"ab" * 80_000, ranks) == [ord("b")] + [257] * 40_000  # ab before ba


def test_compiled_merge_piece_matches_the_fallback_on_real_text():
    from support import compiled_kernels

    from simple_llm.bpe import compile_pattern, split_pieces

    tok = BPETokenizer.train(corpus("shakespeare").read_text(encoding="utf-8")[:30_000], 600)
    pieces = [p.encode() for p in split_pieces(SAMPLE * 3 + "x" * 300, compile_pattern("gpt2"))]
    compiled = compiled_kernels()
    assert [compiled.merge_piece(p, tok.ranks) for p in pieces] == [fallback.merge_piece(p, tok.ranks) for p in pieces]


def naive_learn_merges(words, counts, n_merges):
    """BPE training as the papers write it: recount every pair of every word from scratch, merge the
    most frequent (ties: the smaller pair), until n_merges or no pair occurs twice."""
    words = [list(w) for w in words]
    merges = []
    for new_id in range(256, 256 + n_merges):
        pairs: dict[tuple[int, int], int] = {}
        for w, c in zip(words, counts):
            for pair in pairwise(w):
                pairs[pair] = pairs.get(pair, 0) + c
        if not pairs or max(pairs.values()) < 2:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.integers(1, 4)), min_size=1, max_size=12))
def test_learned_merges_are_those_of_recounting_from_scratch(words):
    """The incremental bookkeeping after each merge (pairs lost and made around every site, in
    overlapping runs such as aaaa too) gives the merges that recounting everything gives."""
    words = [(bytes(b % 4 + 97 for b in w), c) for w, c in words]  # few letters: many merges and ties
    chunks, counts = [list(w) for w, _ in words], [c for _, c in words]
    want = naive_learn_merges(chunks, counts, 40)
    assert learn_merges(chunks, counts, 40) == want  # (learn_merges merges the chunks in place)


def test_learned_merges_on_real_text_are_those_of_recounting():
    from simple_llm.bpe import compile_pattern, split_pieces

    text = corpus("shakespeare").read_text(encoding="utf-8")[:20_000]
    pieces = Counter(p.encode("utf-8") for p in split_pieces(text, compile_pattern("gpt2")))
    chunks, counts = [list(p) for p in pieces], list(pieces.values())
    want = naive_learn_merges(chunks, counts, 60)
    assert learn_merges(chunks, counts, 60) == want


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", None])
def test_training_round_trip_and_save(tmp_path, pattern):
    tok = BPETokenizer.train(SAMPLE * 5, vocab_size=300, pattern=pattern)
    assert 257 < tok.vocab_size <= 300 and tok.specials == {ENDOFTEXT: tok.vocab_size - 1}
    ids = tok.encode(SAMPLE)
    assert len(ids) < len(SAMPLE.encode()) / 2  # it compresses what it learned on
    assert tok.decode(ids) == SAMPLE
    path = tok.save(tmp_path)
    state = json.loads(path.read_text(encoding="utf-8"))
    assert state["kind"] == "bpe" and state["pattern"] == pattern and isinstance(state["merges"][0], str)
    again = load_tokenizer(tmp_path)
    assert again.encode(SAMPLE) == ids and again.vocab_size == tok.vocab_size


def test_special_token_and_listing():
    tok = BPETokenizer.train("abc abc abc", 260)
    eot = tok.specials[ENDOFTEXT]
    assert tok.encode("abc<|endoftext|>abc") == tok.encode("abc") + [eot] + tok.encode("abc")
    assert eot not in tok.encode_ordinary("<|endoftext|>")
    listing = tok.vocabulary_listing().splitlines()
    assert len(listing) == tok.vocab_size and listing[97].startswith("97\ta\t'a'\tbyte")
    assert listing[256].startswith("256\t") and "= " in listing[256] and listing[-1].endswith("special")


def test_training_is_deterministic():
    a = BPETokenizer.train(SAMPLE * 3, 290)
    b = BPETokenizer.train(SAMPLE * 3, 290)
    assert a.merges == b.merges


def test_too_small_a_vocabulary():
    with pytest.raises(ValueError, match="at least 256 \\+ 1"):
        BPETokenizer.train("abc", 256)


def test_bad_pattern():
    with pytest.raises(ValueError, match="valid regex"):
        BPETokenizer.train("abc", 300, pattern="(unclosed")


@pytest.fixture(scope="module", params=["gpt2", "gpt4", None])
def trained(request):
    return BPETokenizer.train(SAMPLE * 3 + "The quick brown fox. 😀😀 éé", 320, pattern=request.param)


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_any_text_round_trips(trained, text):
    assert trained.decode(trained.encode(text)) == text
    assert trained.decode(trained.encode_ordinary(text)) == text


def test_japanese_without_spaces():
    text = corpus("ja_manpages").read_text(encoding="utf-8")[:200_000]
    tok = BPETokenizer.train(text, 512)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(text.encode()) / len(ids) > 2.0  # bytes per token: it learned Japanese pieces
