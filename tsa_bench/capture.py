"""Capture the Q/K/V a real model's attention layer sees (after RoPE), for benchmarks.

Uses transformers' attention interface: a capturing attention function records the inputs of
one layer and stops the forward pass there, so nothing past that layer runs. The layers before
it run transformers' SDPA with the masks transformers builds for them (the SDPA mask builder is
registered under the same name), so the sliding-window layers of a hybrid model (Gemma 3) keep
their band. In a hybrid model only full-attention layers can be captured: TSA never runs in the
others.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

_NAME = "tsa-capture"


class _Captured(Exception):
    def __init__(self, qkv):
        super().__init__("captured")
        self.qkv = qkv


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def capture(module, query, key, value, attention_mask, **kwargs):
        target = getattr(module.config, "_tsa_capture_layer", None)
        if getattr(module, "layer_idx", None) == target:
            raise _Captured((query.detach().clone(), key.detach().clone(), value.detach().clone()))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(_NAME, capture)
    AttentionMaskInterface.register(_NAME, sdpa_mask)


def capture_from_model(model, input_ids: torch.Tensor, layer: Optional[int] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``input_ids`` until attention layer ``layer`` (default: the middle one;
    in a hybrid model the middle full-attention layer) and return its ``q [B, Hq, L, D]``,
    ``k, v [B, Hkv, L, D]``."""
    from tsa_bench.hf.layers import check_full_attention, full_attention_layers

    n_layers = model.config.num_hidden_layers
    full = full_attention_layers(model.config)
    if layer is None:
        layer = n_layers // 2 if full is None else full[len(full) // 2]
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer must be in [0, {n_layers - 1}], got {layer}")
    check_full_attention([layer], model.config, name="layer")
    _register()
    previous = model.config._attn_implementation
    model.config._tsa_capture_layer = layer
    model.set_attn_implementation(_NAME)
    try:
        with torch.inference_mode():
            model.model(input_ids=input_ids, use_cache=False)
    except _Captured as got:
        return got.qkv
    finally:
        model.set_attn_implementation(previous)
        del model.config._tsa_capture_layer
    raise RuntimeError(f"layer {layer} was never reached")


def capture_qkv(model_spec: str, seq_len: int, *, layer: Optional[int] = None, batch: int = 1,
                device="cuda", dtype=torch.bfloat16, seed: int = 0, weights: str = "pretrained"):
    """Load ``model_spec`` (preset, HF id or local path; ``weights="random"`` builds a preset
    from its bundled config) and capture one layer's Q/K/V on a seeded random-token prompt of
    ``seq_len`` tokens."""
    from tsa_bench.hf import load_model

    model, _ = load_model(model_spec, method="dense", weights=weights, dtype=dtype, device=device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=gen).to(device)
    qkv = capture_from_model(model, ids, layer)
    del model
    return qkv
