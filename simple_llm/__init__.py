"""simple_llm: a GPT-2 you can read, run, train and take apart.

    from simple_llm import GPT, GPTConfig, AdamW
    model = GPT(GPTConfig(vocab_size=65, n_ctx=64, n_embd=128, n_head=4, n_layer=4))
    loss, grads = model.loss_and_grads(idx, targets)

``BACKEND`` says which kernels run: "cython" (compiled) or "numpy" (the fallback).
"""

__version__ = "0.1.0"

import os

# OpenBLAS's worker threads spin after each matrix product; between products our own kernels need
# those cores (a training step here was 30% slower). OpenBLAS reads this when NumPy first loads, so
# it takes effect when simple_llm is imported before NumPy (python -m simple_llm always is); a value
# the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .bpe import BPETokenizer, GPT2Tokenizer
from .kernels import BACKEND
from .model import GPT, GPTConfig
from .optim import SGD, AdamW, clip_grad_norm, lr_at
from .tokenizers import CharTokenizer, Tokenizer, TokenizerError, WordTokenizer, load_tokenizer

__all__ = [
    "BACKEND",
    "GPT",
    "SGD",
    "AdamW",
    "BPETokenizer",
    "CharTokenizer",
    "GPT2Tokenizer",
    "GPTConfig",
    "Tokenizer",
    "TokenizerError",
    "WordTokenizer",
    "clip_grad_norm",
    "load_tokenizer",
    "lr_at",
]
