"""Long prompts of an exact token length for profiling and prefill timing.

With a tokenizer: a text file (``--prompt-file``) or, without one, a noise haystack (a short
filler paragraph repeated) with one needle sentence at 50% depth, tokenized and cut to the
length. Without a tokenizer (random-weight presets): seeded uniform random token ids.
Either way the result records what it was, so a profile or timing says which prompt it used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again. ")
NEEDLE = " The special magic number mentioned in this long text is 7319402. "


def prompt_ids(seq_len: int, *, tokenizer=None, vocab_size: Optional[int] = None,
               prompt_file: Optional[str] = None, batch: int = 1, seed: int = 0) -> Tuple[torch.Tensor, str]:
    """``(input_ids [batch, seq_len] int64 on CPU, description)``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if tokenizer is None:
        if prompt_file:
            raise ValueError("--prompt-file needs a tokenizer; random-weight presets have none")
        if not vocab_size or vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 for random prompts, got {vocab_size}")
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab_size, (batch, seq_len), generator=g), f"random token ids (seed {seed})"
    if prompt_file:
        text = Path(prompt_file).read_text()
        desc = f"file {prompt_file}"
    else:
        per = max(1, len(tokenizer(FILLER, add_special_tokens=False)["input_ids"]))
        reps = seq_len // per + 2
        half = reps // 2
        text = FILLER * half + NEEDLE + FILLER * (reps - half)
        desc = "noise haystack with a needle at 50% depth"
    ids = tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"][0]
    if ids.numel() < seq_len:
        reps = -(-seq_len // ids.numel())
        ids = ids.repeat(reps)
        desc += f" (repeated {reps}x to reach {seq_len} tokens)"
    return ids[:seq_len].unsqueeze(0).repeat(batch, 1), desc
