"""simple_llm: a GPT-2 you can read, run, train and take apart.

    from simple_llm import GPT, GPTConfig, AdamW
    model = GPT(GPTConfig(vocab_size=65, n_ctx=64, n_embd=128, n_head=4, n_layer=4))
    loss, grads = model.loss_and_grads(idx, targets)

``BACKEND`` says which kernels run: "cython" (compiled) or "numpy" (the fallback); ``SIMD``, the
compiled build's instruction level: "avx2" or "baseline" (None on the fallback).
``model.add_lora(LoRAConfig(rank, alpha))`` freezes a model and gives it LoRA's adapters to train.
"""

__version__ = "0.1.0"

from .bpe import BPETokenizer, GPT2Tokenizer
from .config import GPTConfig
from .kernels import BACKEND, SIMD
from .lora import LoRAConfig
from .model import GPT
from .modeldir import load_model, load_tokenizer
from .optim import SGD, AdamW, clip_grad_norm, lr_at
from .tokenizers import CharTokenizer, Tokenizer, TokenizerError, WordTokenizer

__all__ = [
    "BACKEND",
    "GPT",
    "SGD",
    "SIMD",
    "AdamW",
    "BPETokenizer",
    "CharTokenizer",
    "GPT2Tokenizer",
    "GPTConfig",
    "LoRAConfig",
    "Tokenizer",
    "TokenizerError",
    "WordTokenizer",
    "clip_grad_norm",
    "load_model",
    "load_tokenizer",
    "lr_at",
]
