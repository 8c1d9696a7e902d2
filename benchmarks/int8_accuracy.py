"""What int8 weights cost in accuracy: loss on held-out text, and greedy continuations, float32 against int8.

    python benchmarks/int8_accuracy.py MODEL_DIR TEXT_FILE [--prompts 20] [--tokens 20]

For the model directory: the mean loss over TEXT_FILE (windows of n_ctx tokens, as `eval` scores)
with float32 weights and with int8 ones (GPT.quantize) and their relative difference; then, for
--prompts prompts cut from the text (16 tokens each, evenly spaced), how many of the --tokens greedy
continuation tokens int8 matches before the first difference, and how many prompts match in full.
"""

from __future__ import annotations

import argparse

import numpy as np

from simple_llm import GPT, load_tokenizer


def mean_loss(model: GPT, tokens: np.ndarray, block: int, batch: int = 8) -> float:
    """Mean cross-entropy of every next token of non-overlapping windows of block + 1 tokens."""
    starts = range(0, len(tokens) - block - 1, block)
    windows = np.stack([tokens[s : s + block + 1] for s in starts])
    total = 0.0
    for i in range(0, len(windows), batch):
        w = windows[i : i + batch]
        total += model.loss(w[:, :-1], w[:, 1:]) * w[:, 1:].size
    return total / windows[:, 1:].size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("text")
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--tokens", type=int, default=20)
    args = p.parse_args()
    model, tok = GPT.from_pretrained(args.model), load_tokenizer(args.model)
    q = model.quantize("int8")
    with open(args.text, encoding="utf-8") as f:
        tokens = np.asarray(tok.encode(f.read()), dtype=np.int64)
    block = min(model.config.n_ctx, 256)
    f32, i8 = mean_loss(model, tokens, block), mean_loss(q, tokens, block)
    print(f"{args.model}: {len(tokens)} tokens; loss float32 {f32:.5f}, int8 {i8:.5f} ({(i8 - f32) / f32:+.3%})")
    agree, whole = [], 0
    for k in range(args.prompts):
        start = k * (len(tokens) - 16) // args.prompts
        prompt = tokens[None, start : start + 16]
        a, b = model.generate(prompt, args.tokens)[0, 16:], q.generate(prompt, args.tokens)[0, 16:]
        same = int(np.argmin(a == b)) if (a != b).any() else args.tokens
        agree.append(same)
        whole += same == args.tokens
    print(
        f"greedy: {whole} of {args.prompts} prompts identical for all {args.tokens} tokens; "
        f"tokens before the first difference: {agree}"
    )


if __name__ == "__main__":
    main()
