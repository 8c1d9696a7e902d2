"""How byte-level BPE learns its merges: count every pair of neighbouring tokens, merge the most
frequent pair into a new token, update the counts around where it was merged, repeat.

``learn_merges`` is what ``BPETokenizer.train`` runs on the pieces of a text (bpe.py).
"""

from __future__ import annotations

import heapq
from collections import Counter
from itertools import pairwise


def merge_word(word: list[int], a: int, b: int, new_id: int) -> tuple[list[int], list[int]]:
    """word with each (a, b) replaced by new_id, left to right, and where they were (in word).

    >>> merge_word([1, 1, 1, 2, 1, 1], 1, 1, 9)
    ([9, 1, 2, 9], [0, 4])
    """
    out: list[int] = []
    sites: list[int] = []
    i, last = 0, len(word) - 1
    while i < last:
        try:
            j = word.index(a, i, last)  # the next a that has a right neighbour, found at C speed
        except ValueError:
            break
        if word[j + 1] == b:
            out += word[i:j]
            out.append(new_id)
            sites.append(j)
            i = j + 2
        else:
            out += word[i : j + 1]
            i = j + 1
    out += word[i:]
    return out, sites


def learn_merges(words: list[list[int]], counts: list[int], n_merges: int) -> list[tuple[int, int]]:
    """The BPE merges of a corpus given as unique words (lists of token ids) and their counts.

    Pair counts are taken once; each merge then changes only the counts of the pairs around its
    sites, in the words that contain the merged pair, and a heap (with stale entries skipped) finds
    the next most frequent pair. Ties go to the smallest pair of ids, so training is deterministic.

    >>> learn_merges([[1, 2, 3, 1, 2]], [1], 1)  # (1, 2) occurs twice
    [(1, 2)]
    """
    pair_counts: Counter[tuple[int, int]] = Counter()
    where: dict[tuple[int, int], set[int]] = {}  # pair -> words that hold it (or once did)
    for wi, (word, count) in enumerate(zip(words, counts)):
        for pair in pairwise(word):
            pair_counts[pair] += count
            where.setdefault(pair, set()).add(wi)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    next_id = 256
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if -neg != pair_counts.get(pair, 0):
            continue  # stale: this pair's count changed after the entry was pushed
        if -neg < 2:
            break
        new_id, (a, b) = next_id, pair
        merges.append(pair)
        next_id += 1
        delta: Counter[tuple[int, int]] = Counter()
        for wi in where.pop(pair):
            word, count = words[wi], counts[wi]
            merged, sites = merge_word(word, a, b, new_id)
            if not sites:
                continue  # a stale index: the pair no longer occurs in this word
            # the pairs that touched a merged site are gone ...
            for j in {j for s in sites for j in (s - 1, s, s + 1) if 0 <= j < len(word) - 1}:
                delta[word[j], word[j + 1]] -= count
            # ... and the new token pairs with its neighbours (site k moved k places left)
            for j in {j for k, s in enumerate(sites) for j in (s - k - 1, s - k) if 0 <= j < len(merged) - 1}:
                p = (merged[j], merged[j + 1])
                delta[p] += count
                where.setdefault(p, set()).add(wi)
            words[wi] = merged
        for p, d in delta.items():
            if d:
                pair_counts[p] += d
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    del pair_counts[p]
        pair_counts.pop(pair, None)
    return merges
