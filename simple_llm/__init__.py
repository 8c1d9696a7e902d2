"""simple_llm: a GPT-2 you can read, run, train and take apart.

    from simple_llm import GPT, GPTConfig, AdamW
    model = GPT(GPTConfig(vocab_size=65, n_ctx=64, n_embd=128, n_head=4, n_layer=4))
    loss, grads = model.loss_and_grads(idx, targets)

``BACKEND`` says which kernels run: "cython" (compiled) or "numpy" (the fallback).
"""

__version__ = "0.1.0"

from .kernels import BACKEND
from .model import GPT, GPTConfig
from .optim import SGD, AdamW, clip_grad_norm, lr_at
from .tokenizers import CharTokenizer, Tokenizer, TokenizerError, WordTokenizer, load_tokenizer

__all__ = [
    "BACKEND",
    "GPT",
    "GPTConfig",
    "AdamW",
    "SGD",
    "clip_grad_norm",
    "lr_at",
    "Tokenizer",
    "TokenizerError",
    "CharTokenizer",
    "WordTokenizer",
    "load_tokenizer",
]
