"""Data parallelism inside one training step, on the cores of one machine.

The batch is cut into one shard per core; each shard's forward and backward run on their own
thread, through layers that share the model's weights but write gradients of their own, and the
gradients are summed at the end. That is what PyTorch's DistributedDataParallel does across GPUs, in
miniature (docs/PERFORMANCE.md says why this design: each core runs exactly one of our threads, with
single-threaded matrix products and kernels, so no two thread pools take turns on a core).

While the shards run, NumPy's BLAS is held to one thread (threadpoolctl) and given back its own
setting when they finish; nothing else in the process is changed.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from itertools import pairwise
from typing import Any, TypeVar

T = TypeVar("T")
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_controller: Any = None
KMP_DUPLICATE_LIB_OK = "KMP_DUPLICATE_LIB_OK"  # what threadpoolctl's import sets (below)


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def shards(batch: int, n: int | None = None) -> list[slice]:
    """Rows of a batch cut into min(batch, n or cores()) contiguous shards as equal as can be.

    >>> shards(5, 2)
    [slice(0, 3, None), slice(3, 5, None)]
    """
    n = max(1, min(batch, n or cores()))
    edges = [batch * k // n for k in range(n + 1)]
    edges = [0] + [batch - edges[n - k] for k in range(1, n)] + [batch]  # the larger shards first
    return [slice(a, b) for a, b in pairwise(edges)]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """NumPy's BLAS on one thread inside the block, its own setting again after it."""
    global _controller
    with _lock:
        if _controller is None:
            _controller = _threadpool_controller()
    with _controller.limit(limits=1, user_api="blas"):
        yield


def _threadpool_controller() -> Any:
    """threadpoolctl's controller. Its import runs os.environ.setdefault("KMP_DUPLICATE_LIB_OK",
    "True"), which changes how Intel's OpenMP behaves for every library in the process: where the
    user had not set that variable, it is taken away again at once. Only that one variable is
    touched, so a change another thread makes meanwhile stays."""
    added = KMP_DUPLICATE_LIB_OK not in os.environ
    try:
        from threadpoolctl import ThreadpoolController
    finally:
        if added:
            os.environ.pop(KMP_DUPLICATE_LIB_OK, None)
    return ThreadpoolController()


def run(task: Callable[[int], T], n: int, one_blas_thread: bool = False) -> list[T]:
    """[task(0), ..., task(n - 1)], each on its own thread (task 0 on the caller's), NumPy's BLAS on
    one thread while they run; a single task keeps BLAS's own threads unless one_blas_thread."""
    global _pool
    if n == 1:
        if not one_blas_thread:
            return [task(0)]
        with single_threaded_blas():
            return [task(0)]
    with _lock:
        if _pool is None or _pool._max_workers < n - 1:
            _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="simple_llm-shard")
        pool = _pool
    with single_threaded_blas():
        # each task in a copy of the caller's context: NumPy's errstate (np.errstate) lives there
        others = [pool.submit(contextvars.copy_context().run, task, k) for k in range(1, n)]
        try:
            first = task(0)
        finally:
            wait(others)  # none outlives the single-threaded block, even when task 0 failed
        return [first, *(f.result() for f in others)]
