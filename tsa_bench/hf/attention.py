"""TSA as a transformers attention implementation (``attn_implementation="tsa"``).

transformers (>= 4.48, 5.x) looks attention functions up by name in ``AttentionInterface``
and mask builders in ``AttentionMaskInterface``; registering both under ``"tsa"`` is all it
takes, no modeling file is touched. The function is called once per decoder layer as
``fn(module, query, key, value, attention_mask, dropout=, scaling=, **kw)`` with
``query [B, Hq, Lq, D]`` after RoPE (a transposed view) and ``key/value [B, Hkv, Lk, D]``
straight from the KV cache (full, unrepeated), and returns ``([B, Lq, Hq, D], None)``.

What runs where, per call:

* **prefill** (``Lq == Lk > 1``, no mask): a selected layer runs :func:`tsa_core.tsa_attention`
  with the method's prefill kernel on the kept tokens; any other layer runs that kernel on the
  full sequence. The prefill kernel is the dense backend (method ``"tsa"``/``"dense"``) or a
  sparse method of the registry (``"<name>"``, ``"<name>+tsa"``).
* **decode or chunked prefill** (``Lq != Lk`` or ``Lq == 1``) and **masked prefill** in a
  layer without TSA: torch SDPA through transformers' own SDPA function, with its mask.
  The KV cache is written by the model before this function runs, so it keeps every token.
* **masked prefill in a TSA layer** (a padded batch, or a sliding window shorter than the
  prompt): refused with a ValueError. TSA scores tokens with the last ``W`` queries and its
  kernels are plain-causal, so padding would be scored and attended as if it were text.
* **sliding-window layers of a hybrid model** (Gemma 3: ``sliding_window`` is passed, and the
  mask is banded once the prompt is longer than the window): SDPA with their mask, as in the
  plain model (``sliding="mask"``, the default: one masked product over the whole L x L map),
  or, with ``sliding="banded"``, the same SDPA call on query chunks against only the keys their
  band can reach (:func:`banded_sliding_attention`; the same mask entries, O(L x window) work).
  ``configure_tsa`` refuses to select them (only full-attention layers run TSA); a sliding layer
  selected by hand is refused here as soon as its mask is banded.

The per-model configuration is a JSON-safe dict on ``model.config.tsa_settings`` (so two
models with different settings coexist, and ``print(model.config)`` still works). The
stats of the last prefill of each layer are kept on its attention module (:func:`last_stats`).
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from tsa_core import TSAConfig, TSAStats, tsa_attention
from tsa_core.backends import get_backend

ATTN_NAME = "tsa"
SETTINGS_ATTR = "tsa_settings"
_STATS_ATTR = "tsa_last_stats"
_TSA_FIELDS = ("tau", "window", "pool_kernel", "min_keep", "keep_ratio", "dropped")


@dataclass(frozen=True)
class TSAPlan:
    """Resolved per-model settings, rebuilt from ``config.tsa_settings`` (cached)."""

    method: str                       # "dense", "tsa", "<backend>", "<backend>+tsa"
    prefill_backend: str              # registry kernel for full-sequence / kept-token prefill
    dense_backend: str                # registry dense kernel the method was built on
    tsa: Optional[TSAConfig]          # None: no layer runs TSA
    sparse_layers: Tuple[int, ...]
    impl: str = "auto"
    layer_source: str = ""
    layer_tsa: Tuple[Tuple[int, TSAConfig], ...] = ()   # per-layer overrides of ``tsa``
    sliding: str = "mask"             # prefill of sliding-window layers: "mask" or "banded"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["tsa"] = None if self.tsa is None else _tsa_fields(self.tsa)
        d["sparse_layers"] = list(self.sparse_layers)
        d["layer_tsa"] = {str(i): _tsa_fields(c) for i, c in self.layer_tsa}
        if self.sliding == "mask":    # the default is left out: settings (and run keys) of older runs stay
            del d["sliding"]
        return d

    def is_sparse(self, layer_idx: int) -> bool:
        return self.tsa is not None and layer_idx in self.sparse_layers

    def config_for(self, layer_idx: int) -> Optional[TSAConfig]:
        """The TSA hyper-parameters of one layer (its override, else the shared ones)."""
        for i, cfg in self.layer_tsa:
            if i == layer_idx:
                return cfg
        return self.tsa


def _tsa_fields(cfg: TSAConfig) -> Dict[str, Any]:
    # dropped="zero" (the default, the paper) is left out, so the settings, and the ruler run
    # keys hashed from them, of every run made before the field existed stay the same
    return {f: getattr(cfg, f) for f in _TSA_FIELDS if not (f == "dropped" and cfg.dropped == "zero")}


def parse_method(method: str, dense_backend: str) -> Tuple[str, str, bool]:
    """``method`` -> ``(canonical method, prefill kernel, uses TSA)``.

    ``"dense"``: the dense backend everywhere. ``"tsa"``: TSA over the dense backend.
    ``"<name>"``: registry backend ``name`` (e.g. a sparse method) for every prefill layer.
    ``"<name>+tsa"``: TSA in the sparse layers with ``name`` on the kept tokens, ``name``
    alone in the other layers.
    """
    if not isinstance(method, str) or not method.strip():
        raise ValueError(f"method must be 'dense', 'tsa', '<backend>' or '<backend>+tsa', got {method!r}")
    m = method.strip().lower()
    get_backend(dense_backend)                      # raises a ValueError listing the registry
    if m == "dense":
        return "dense", dense_backend, False
    if m == "tsa":
        return "tsa", dense_backend, True
    base, plus, tail = m.partition("+")
    if plus and tail != "tsa":
        raise ValueError(f"method {method!r}: only '+tsa' may follow a backend name")
    get_backend(base)
    return m, base, bool(plus)


def plan_from_settings(settings: Dict[str, Any]) -> TSAPlan:
    return _plan_from_json(json.dumps(settings, sort_keys=True))


def _plan_of(module: torch.nn.Module, settings: Dict[str, Any]) -> TSAPlan:
    """``plan_from_settings`` memoised on the module for this very settings object
    (``configure_tsa`` always installs a new dict, so a reconfiguration is seen)."""
    cached = module.__dict__.get("_tsa_plan_cache")
    if cached is not None and cached[0] is settings:
        return cached[1]
    plan = plan_from_settings(settings)
    module.__dict__["_tsa_plan_cache"] = (settings, plan)
    return plan


@functools.lru_cache(maxsize=64)
def _plan_from_json(text: str) -> TSAPlan:
    d = json.loads(text)
    tsa = d.get("tsa")
    layers = tuple(int(i) for i in d.get("sparse_layers") or ())
    cfg = None if tsa is None else TSAConfig(**tsa, sparse_layers=layers)
    overrides = tuple(sorted((int(i), TSAConfig(**c, sparse_layers=layers))
                             for i, c in (d.get("layer_tsa") or {}).items()))
    return TSAPlan(method=d["method"], prefill_backend=d["prefill_backend"],
                   dense_backend=d["dense_backend"], tsa=cfg, sparse_layers=layers,
                   impl=d.get("impl", "auto"), layer_source=d.get("layer_source", ""), layer_tsa=overrides,
                   sliding=d.get("sliding", "mask"))


def _dense_stats(q: torch.Tensor, window: int, reason: str) -> TSAStats:
    B, Hq, L, _ = q.shape
    P = max(0, L - window)
    return TSAStats(L, window, Hq, True, reason, (P,) * B, (L,) * B, (0.0,) * B)


def _sdpa_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


SLIDING_PREFILL = ("mask", "banded")


def sliding_chunk(window: int) -> int:
    """Queries per chunk of :func:`banded_sliding_attention`: ``max(2 * window, 1024)``. Each
    chunk scores ``chunk x (chunk + window + 1)`` entries, about 3x the band's own at
    ``chunk = 2 x window`` (still O(L x window)), in ``L / chunk`` calls."""
    return max(2 * int(window), 1024)


def banded_sliding_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor, window: int, dropout: float = 0.0,
                             scaling: Optional[float] = None, chunk: Optional[int] = None, **kwargs):
    """Prefill of a sliding-window layer, chunk by chunk: queries ``[s, e)`` attend to keys
    ``[max(0, s - window - 1), e)`` through transformers' SDPA function with the matching slice
    of ``attention_mask`` (the layer's own mask: band, causality and any padding). A query of a
    sliding layer never sees a key more than ``window`` positions back, so every key the mask
    allows is in its chunk's slice and the result is the masked product over the full map, up
    to rounding, for O(L x (chunk + window)) work instead of O(L^2).

    ``query [B, Hq, L, D]``, ``key/value [B, Hkv, L, D]``, ``attention_mask`` ``[B, 1, L, L]``
    (boolean or additive); returns ``[B, L, Hq, D]`` like the SDPA function."""
    L = query.shape[2]
    if key.shape[2] != L or attention_mask is None or attention_mask.shape[-1] < L or attention_mask.shape[-2] < L:
        raise ValueError("banded sliding attention is for prefill with the layer's [B, 1, L, L] mask; got query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}, mask "
                         f"{None if attention_mask is None else tuple(attention_mask.shape)}")
    if int(window) < 1:
        raise ValueError(f"sliding window must be >= 1, got {window!r}")
    step = int(chunk) if chunk is not None else sliding_chunk(window)
    if step < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    parts = []
    for s in range(0, L, step):
        e = min(L, s + step)
        ks = max(0, s - int(window) - 1)
        out, _ = _sdpa_forward(module, query[:, :, s:e], key[:, :, ks:e], value[:, :, ks:e],
                               attention_mask[:, :, s:e, ks:e], dropout, scaling, **kwargs)
        parts.append(out)
    return torch.cat(parts, dim=1), None


_TIMING_ATTR = "tsa_time_prefill"
_EVENTS_ATTR = "tsa_prefill_events"


def set_attention_timing(model: torch.nn.Module, on: bool = True) -> None:
    """Record CUDA events around every layer's *prefill* attention call (``Lq == Lk > 1``), the
    whole call: TSA's scoring, selection, gather, kernel and scatter, or the dense kernel. Read
    them with :func:`attention_times` after the prefill has been synchronised. Decode steps are
    not timed (they may run inside a CUDA graph). No effect on CPU tensors."""
    for _, mod in attention_modules(model):
        if on:
            mod.__dict__[_TIMING_ATTR] = True
        else:
            mod.__dict__.pop(_TIMING_ATTR, None)
            mod.__dict__.pop(_EVENTS_ATTR, None)


def attention_times(model: torch.nn.Module) -> Dict[int, float]:
    """Milliseconds of each layer's last timed prefill attention call (see
    :func:`set_attention_timing`); call after ``torch.cuda.synchronize()``. The events are
    consumed: a layer is reported once per prefill."""
    out: Dict[int, float] = {}
    for idx, mod in attention_modules(model):
        ev = mod.__dict__.pop(_EVENTS_ATTR, None)
        if ev is not None:
            out[idx] = float(ev[0].elapsed_time(ev[1]))
    return dict(sorted(out.items()))


_DECODE_ATTR = "tsa_decode_attention"
DECODE_ATTENTION = ("sdpa", "grouped")


def set_decode_attention(model: torch.nn.Module, kind: str = "sdpa") -> None:
    """How decode steps (one query per row) attend: ``"sdpa"`` (transformers' SDPA function:
    K/V repeated to the query heads, torch's kernel choice) or ``"grouped"``
    (:func:`grouped_decode_attention`). Prefill is not affected."""
    if kind not in DECODE_ATTENTION:
        raise ValueError(f"decode attention must be one of {DECODE_ATTENTION}, got {kind!r}")
    for _, mod in attention_modules(model):
        mod.__dict__[_DECODE_ATTR] = kind


def grouped_decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             mask: Optional[torch.Tensor], scaling: Optional[float]) -> torch.Tensor:
    """One decode step of GQA attention without repeating K/V: the ``G = Hq / Hkv`` query heads
    of a group become the query axis of one product with their KV head (query head ``h`` uses KV
    head ``h // G``, as ``repeat_kv``), so K and V are read once per KV head.

    ``query [B, Hq, 1, D]``, ``key/value [B, Hkv, S, D]``, ``mask`` ``None``, boolean
    (True = attend) or additive, broadcastable to ``[B, 1, 1, S]``. Scores and softmax in fp32
    (on CUDA the half-precision product writes fp32 directly), probabilities cast to V's dtype
    for the second product. Returns ``[B, 1, Hq, D]``.
    """
    B, Hq, Lq, D = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    if Lq != 1 or Hq % Hkv:
        raise ValueError(f"grouped decode attention takes one query per row and Hq % Hkv == 0, got "
                         f"query {tuple(query.shape)}, key {tuple(key.shape)}")
    G = Hq // Hkv
    scale = scaling if scaling is not None else D ** -0.5
    q = query.reshape(B * Hkv, G, D)
    kt = key.reshape(B * Hkv, S, D).transpose(1, 2)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        s = torch.bmm(q, kt, out_dtype=torch.float32)
    else:
        s = torch.bmm(q.float(), kt.float())
    s = (s * scale).view(B, Hkv, G, S)
    if mask is not None:
        m = mask[..., :S]                                   # [B or 1, 1, 1, S]
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
    p = torch.softmax(s, dim=-1).to(value.dtype).view(B * Hkv, G, S)
    out = torch.bmm(p, value.reshape(B * Hkv, S, value.shape[-1]))
    return out.view(B, Hq, 1, -1).transpose(1, 2).contiguous()


def tsa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                          value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                          dropout: float = 0.0, scaling: Optional[float] = None, **kwargs):
    """The function registered as ``"tsa"`` (see the module docstring for the dispatch)."""
    if (module.__dict__.get(_TIMING_ATTR) and query.is_cuda and query.shape[2] > 1
            and query.shape[2] == key.shape[2] and not torch.cuda.is_current_stream_capturing()):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = _dispatch(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        end.record()
        module.__dict__[_EVENTS_ATTR] = (start, end)
        return out
    return _dispatch(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def _dispatch(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor, attention_mask: Optional[torch.Tensor],
              dropout: float = 0.0, scaling: Optional[float] = None, **kwargs):
    config = module.config
    settings = getattr(config, SETTINGS_ATTR, None)
    if settings is None:
        raise ValueError(
            "attn_implementation='tsa' needs model.config.tsa_settings; build the model with "
            "tsa_bench.hf.load_model(...) or call tsa_bench.hf.configure_tsa(model, ...)")
    plan = _plan_of(module, settings)
    layer_idx = getattr(module, "layer_idx", None)
    if layer_idx is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx; TSA needs per-layer attention modules")
    for unsupported in ("softcap", "s_aux", "sinks"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"the 'tsa' attention does not support {unsupported!r} (model "
                             f"{type(module).__name__}); use a Llama/Mistral/Qwen2/Qwen3-style model")
    if getattr(module, "is_causal", True) is False:
        raise ValueError("the 'tsa' attention supports causal decoder self-attention only")
    if dropout:
        raise ValueError(f"the 'tsa' attention is for inference; got attention dropout {dropout} "
                         "(call model.eval())")
    q_len, k_len = query.shape[2], key.shape[2]
    cfg = plan.config_for(layer_idx)
    window = cfg.window if cfg is not None else 0

    if q_len != k_len or q_len == 1:                         # decode / chunked prefill: dense
        if q_len == 1 and module.__dict__.get(_DECODE_ATTR) == "grouped":
            return grouped_decode_attention(query, key, value, attention_mask, scaling), None
        return _sdpa_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)

    sparse = plan.is_sparse(layer_idx)
    sliding = kwargs.get("sliding_window")
    if attention_mask is not None:
        if sparse and sliding is not None and not cfg.runs_dense(q_len):
            raise ValueError(
                f"layer {layer_idx} is a sliding-window layer (window {sliding}, shorter than the {q_len}-token "
                "prompt); TSA runs in full-attention layers only (see tsa_bench.hf.layers.full_attention_layers)")
        if sparse and not cfg.runs_dense(q_len):
            raise ValueError(
                f"layer {layer_idx}: TSA prefill got an attention mask (a padded batch, or a sliding "
                f"window shorter than the {q_len}-token prompt); TSA supports unpadded causal prefill "
                "only. Run prompts one at a time (batch 1) or in equal-length batches without padding "
                "(generate() infers padding wherever input_ids equal pad_token_id: pass "
                "attention_mask=torch.ones_like(input_ids) for an unpadded prompt).")
        banded = sliding is not None and plan.sliding == "banded" and q_len > sliding_chunk(sliding)
        if banded:
            out = banded_sliding_attention(module, query, key, value, attention_mask, sliding, dropout, scaling,
                                           **kwargs)
        else:
            out = _sdpa_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        reason = ("sliding-window layer: dense SDPA with its mask" + (", by query chunks" if banded else "")) \
            if sliding is not None else "attention mask: dense SDPA"
        setattr(module, _STATS_ATTR, _dense_stats(query, window, reason))
        return out

    if sparse:
        out, stats = tsa_attention(query, key, value, cfg, plan.prefill_backend, scale=scaling,
                                   impl=plan.impl)
    else:
        out = get_backend(plan.prefill_backend)(query, key, value, scale=scaling).transpose(1, 2)
        stats = _dense_stats(query, window, "layer not selected" if plan.tsa is not None
                             else f"method {plan.method!r} runs no TSA")
    setattr(module, _STATS_ATTR, stats)
    return out, None


def register_tsa_attention() -> str:
    """Register ``"tsa"`` with transformers' attention and mask interfaces (idempotent).

    The mask builder is transformers' SDPA one: it returns ``None`` for a plain causal
    prefill or decode step (so TSA and the fast kernels run) and a boolean mask whenever
    padding or a short sliding window makes attention non-causal (so it is never dropped
    silently). Returns the implementation name to pass as ``attn_implementation``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if AttentionInterface._global_mapping.get(ATTN_NAME) is not tsa_attention_forward:
        AttentionInterface.register(ATTN_NAME, tsa_attention_forward)
    if AttentionMaskInterface._global_mapping.get(ATTN_NAME) is not sdpa_mask:
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME


def attention_modules(model: torch.nn.Module):
    """``(layer_idx, module)`` of every attention module that dispatches by ``config``."""
    for mod in model.modules():
        if isinstance(getattr(mod, "layer_idx", None), int) and hasattr(mod, "config") \
                and any(hasattr(mod, p) for p in ("q_proj", "qkv_proj", "query_key_value")):
            yield mod.layer_idx, mod


def last_stats(model: torch.nn.Module) -> Dict[int, TSAStats]:
    """Per-layer :class:`~tsa_core.TSAStats` of the most recent prefill forward.

    Decode steps do not overwrite them. Layers that did not run TSA report ``dense=True``
    with the reason (not selected, prompt shorter than ``min_keep + window``, tau = 0, mask).
    Empty before the first prefill.
    """
    out: Dict[int, TSAStats] = {}
    for idx, mod in attention_modules(model):
        stats = getattr(mod, _STATS_ATTR, None)
        if stats is not None:
            out[idx] = stats
    return dict(sorted(out.items()))


def clear_stats(model: torch.nn.Module) -> None:
    for _, mod in attention_modules(model):
        if hasattr(mod, _STATS_ATTR):
            delattr(mod, _STATS_ATTR)


def summarize_stats(stats: Dict[int, TSAStats], sparse_layers) -> Dict[str, float]:
    """Aggregates over the selected layers (batch element 0 .. B-1 averaged).

    ``keep_fraction``/``sparsity``: mean over the selected layers (dense fallbacks count as
    keep 1 / sparsity 0); ``fallback_layers``: selected layers that ran dense.
    """
    sel = [stats[i] for i in sparse_layers if i in stats]
    if not sel:
        return {"layers": 0, "keep_fraction": 1.0, "sparsity": 0.0, "fallback_layers": 0}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "layers": len(sel),
        "keep_fraction": mean([mean(s.keep_fraction) for s in sel]),
        "sparsity": mean([mean(s.sparsity) for s in sel]),
        "fallback_layers": sum(1 for s in sel if s.dense),
    }
