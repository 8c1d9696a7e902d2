"""The worked examples in docstrings are right."""

from __future__ import annotations

import doctest

import pytest

import simple_llm.bpe
import simple_llm.params
import simple_llm.session


@pytest.mark.parametrize("module", [simple_llm.bpe, simple_llm.params, simple_llm.session])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
