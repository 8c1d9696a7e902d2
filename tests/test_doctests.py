"""The worked examples in docstrings are right."""

from __future__ import annotations

import doctest

import pytest

import simple_llm.bpe_merges
import simple_llm.evaluate
import simple_llm.fallback
import simple_llm.parallel
import simple_llm.params
import simple_llm.session

MODULES = [
    simple_llm.fallback,
    simple_llm.bpe_merges,
    simple_llm.evaluate,
    simple_llm.parallel,
    simple_llm.params,
    simple_llm.session,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
