"""GPTConfig: the shape of a GPT-2 model, as config.json stores it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import gpt2_shapes


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's byte-level BPE vocabulary
    n_ctx: int = 1024  # longest sequence: rows of the position table wpe
    n_embd: int = 768  # channels C of the residual stream
    n_head: int = 12  # attention heads; each sees n_embd / n_head channels
    n_layer: int = 12  # transformer blocks
    layer_norm_epsilon: float = 1e-5  # GPT-2's value, added to the variance
    dropout: float = 0.0  # on embeddings, attention weights and residual branches while training

    def __post_init__(self):
        for name in ("vocab_size", "n_ctx", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPTConfig: {name} must be a positive integer, not {value!r}")
            setattr(self, name, int(value))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), not {self.dropout!r}")
        if not float(self.layer_norm_epsilon) > 0.0:
            raise ValueError(f"GPTConfig: layer_norm_epsilon must be positive, not {self.layer_norm_epsilon!r}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in checkpoint order."""
        return gpt2_shapes(self.vocab_size, self.n_ctx, self.n_embd, self.n_layer)
