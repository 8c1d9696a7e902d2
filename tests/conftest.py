"""Fixtures: run tests on both kernel backends.

``backend`` parametrizes a test over the NumPy fallback and the compiled kernels. Without the compiled
extension the "cython" cases skip, unless SIMPLE_LLM_REQUIRE_COMPILED=1 (CI, wheel tests), where they
fail: a build that silently fell back to NumPy must not pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import compiled_kernels

from simple_llm import fallback, kernels


@pytest.fixture(params=["numpy", "cython"])
def backend(request, monkeypatch):
    """Switch every kernel call, the model's included, to one backend for the test."""
    module = fallback if request.param == "numpy" else compiled_kernels()
    monkeypatch.setattr(kernels, "impl", module)
    return module


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param
