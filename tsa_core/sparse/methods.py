"""Sparse attention methods as registry backends: estimate a pattern, then run it.

Each method is two stages, exposed separately so a benchmark can time them apart:

* :func:`estimate_pattern` ``(method, q, k, ...) -> BlockPattern``;
* :func:`run_with_pattern` ``(q, k, v, pattern, ...) -> out [B, Hq, L, D]`` (the Triton
  block-sparse kernel, FlexAttention with a BlockMask built from the same lists, or the
  masked-dense reference).

:func:`sparse_attention` chains them with the backend signature of
:mod:`tsa_core.backends` (``fn(q, k, v, *, scale, valid_len=None, **options)``). With
``valid_len`` (a TSA-compressed batch padded at the end), every batch element runs alone on
its valid prefix, so the estimation reads that element's *last valid* queries; padding rows
of the output are exact zeros.

**Density side channel.** The registry call signature has no room for extra outputs, so the
last call's statistics are kept per process and returned by :func:`last_stats` (a dict:
``method``, ``impl``, ``executor``, ``block_size``, ``seq_lens`` per element, ``density``
= active causal blocks / causal blocks averaged over elements and heads, ``density_per_element``,
and for FlexPrefill ``query_aware_heads``). Callers of :func:`sparse_attention` itself can
also pass ``stats={}`` to get the same dict filled in place. Densities are kept as device
tensors and converted on request, so a call adds no host synchronisation (except the one
``valid_len.tolist()`` needed to slice a padded batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from tsa_core._checks import check_qkv, interpreter_on
from tsa_core.sparse.pattern import BlockPattern


@dataclass(frozen=True)
class SparseMethod:
    name: str
    params_cls: type
    naive: Callable
    triton: Callable
    description: str


def _methods() -> Dict[str, SparseMethod]:
    from tsa_core.sparse import flexprefill, minference, xattention
    return {
        "flexprefill": SparseMethod("flexprefill", flexprefill.FlexPrefillParams,
                                    flexprefill.flexprefill_pattern_naive, flexprefill.flexprefill_pattern_triton,
                                    "JS-divergence query-aware / vertical-slash blocks, gamma coverage"),
        "xattention": SparseMethod("xattention", xattention.XAttentionParams,
                                   xattention.xattention_pattern_naive, xattention.xattention_pattern_triton,
                                   "antidiagonal block scores, cumulative threshold"),
        "minference": SparseMethod("minference", minference.MInferenceParams,
                                   minference.minference_pattern_naive, minference.minference_pattern_triton,
                                   "vertical-slash from the last 64 queries, adaptive 0.1 L budget"),
    }


def get_method(name: str) -> SparseMethod:
    methods = _methods()
    if name not in methods:
        raise ValueError(f"unknown sparse method {name!r}; choose from {', '.join(sorted(methods))}")
    return methods[name]


def resolve_impl(impl: str, device: torch.device) -> str:
    """``"auto"`` -> ``"triton"`` on CUDA or under the interpreter, else ``"naive"``."""
    if impl not in ("auto", "triton", "naive"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'naive', got {impl!r}")
    if impl == "auto":
        return "triton" if (device.type == "cuda" or interpreter_on()) else "naive"
    return impl


def make_params(method: str, **params):
    m = get_method(method)
    try:
        return m.params_cls(**params)
    except TypeError as e:
        raise ValueError(f"bad parameter for {method}: {e}") from None


def estimate_pattern(method: str, q: torch.Tensor, k: torch.Tensor, *, scale: Optional[float] = None,
                     impl: str = "auto", params=None, **param_kwargs):
    """Pattern estimation of ``method`` on ``q [B, Hq, L, D]``, ``k [B, Hkv, L, D]``.

    ``params``: a method params object, or keyword parameters (e.g. ``gamma=0.9``).
    Returns a :class:`BlockPattern` (FlexPrefill's per-head decisions are dropped here; use
    :func:`tsa_core.sparse.flexprefill.flexprefill_pattern_triton` for them).
    """
    check_qkv(q, k, k)
    m = get_method(method)
    params = params if params is not None else make_params(method, **param_kwargs)
    fn = m.triton if resolve_impl(impl, q.device) == "triton" else m.naive
    result = fn(q, k, params, scale=scale)
    return result[0] if isinstance(result, tuple) else result


def flex_block_mask(pattern: BlockPattern, device):
    """FlexAttention ``BlockMask`` holding exactly the active blocks of ``pattern`` (block
    patterns only; its ``cols`` are ignored): diagonal blocks partial (causal ``mask_mod``),
    all other active blocks full. Built on ``device``; forward-only metadata where torch allows."""
    from torch.nn.attention.flex_attention import BlockMask
    from tsa_core.sparse.pattern import mask_to_lists
    n = pattern.num_blocks
    eye = torch.eye(n, dtype=torch.bool, device=device)
    part_idx, part_cnt = mask_to_lists(pattern.block_mask & eye)
    full_idx, full_cnt = mask_to_lists(pattern.block_mask & ~eye)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    kwargs = dict(BLOCK_SIZE=pattern.block_size, mask_mod=causal,
                  seq_lengths=(pattern.seq_len, pattern.seq_len))
    try:    # forward only: skip the transposed (backward) metadata where torch allows it
        return BlockMask.from_kv_blocks(part_cnt, part_idx, full_cnt, full_idx, compute_q_blocks=False, **kwargs)
    except TypeError:
        return BlockMask.from_kv_blocks(part_cnt, part_idx, full_cnt, full_idx, **kwargs)


_FLEX = {}


def compiled_flex_attention():
    """``torch.compile(flex_attention, dynamic=False)``, compiled once per process and shared
    by :func:`run_with_pattern` (``executor="flex"``) and the benchmarks that time it."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def run_with_pattern(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: BlockPattern, *,
                     scale: Optional[float] = None, impl: str = "auto", executor: str = "triton",
                     out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention of ``q`` over ``k, v`` restricted to ``pattern`` (causal), ``[B, Hq, L, D]``.

    ``executor``: ``"triton"`` (our block-sparse kernel; ``impl="naive"`` runs the
    masked-dense reference instead) or ``"flex"`` (FlexAttention, CUDA, block patterns
    without columns).
    """
    B, Hq, Hkv, L, D = check_qkv(q, k, v)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if executor == "flex":
        if pattern.cols is not None:
            raise ValueError("executor='flex' runs block patterns only; this pattern has key columns")
        res = compiled_flex_attention()(q, k, v, block_mask=flex_block_mask(pattern, q.device), scale=scale,
                                        enable_gqa=Hq != Hkv)
        if out is not None:
            out.copy_(res)
            return out
        return res
    if executor != "triton":
        raise ValueError(f"executor must be 'triton' or 'flex', got {executor!r}")
    if resolve_impl(impl, q.device) == "naive":
        from tsa_core.sparse.block_sparse.naive import block_sparse_attention_naive
        res = block_sparse_attention_naive(q, k, v, pattern, scale=scale)
        if out is not None:
            out.copy_(res)
            return out
        return res
    from tsa_core.sparse.block_sparse.kernel import block_sparse_attention
    return block_sparse_attention(q, k, v, pattern, scale=scale, out=out)


def stages(backend):
    """The two stages of a sparse registry entry, for benchmarks that time them apart.

    ``backend``: a registry name or :class:`~tsa_core.backends.AttentionBackend` whose target
    is :func:`sparse_attention`. Returns ``(estimate, run)`` with
    ``estimate(q, k, scale) -> BlockPattern`` and ``run(q, k, v, pattern, scale) -> out``,
    using the entry's method, parameters and executor (batch elements are not split by
    ``valid_len`` here: time them on one unpadded batch).
    """
    from tsa_core.backends import get_backend
    be = get_backend(backend)
    if be.kind != "sparse" or not be.target.endswith(":sparse_attention"):
        raise ValueError(f"backend {be.name!r} is not a sparse-method entry")
    opts = dict(be.options)
    method = opts.pop("method", "flexprefill")
    executor = opts.pop("executor", "triton")
    impl = opts.pop("impl", "auto")
    params = make_params(method, **opts)

    def estimate(q, k, scale=None):
        return estimate_pattern(method, q, k, scale=scale, impl=impl, params=params)

    def run(q, k, v, pattern, scale=None):
        return run_with_pattern(q, k, v, pattern, scale=scale, impl=impl, executor=executor)

    return estimate, run


_LAST: Dict[str, object] = {}


def last_stats() -> Dict[str, object]:
    """Statistics of the most recent :func:`sparse_attention` call in this process."""
    return _materialize(_LAST)


def _materialize(raw: Dict[str, object]) -> Dict[str, object]:
    if not raw:
        return {}
    out = {k: v for k, v in raw.items() if not k.startswith("_")}
    dens = [d.float().mean().item() for d in raw["_density"]]
    weights = [n * (n + 1) / 2 for n in raw["seq_lens"]]
    out["density_per_element"] = tuple(dens)
    out["density"] = sum(d * w for d, w in zip(dens, weights)) / max(sum(weights), 1e-30)
    if raw.get("_query_aware"):
        out["query_aware_heads"] = tuple(int(t.sum().item()) for t in raw["_query_aware"])
    return out


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                     valid_len: Optional[torch.Tensor] = None, method: str = "flexprefill",
                     impl: str = "auto", executor: str = "triton", stats: Optional[dict] = None,
                     **params) -> torch.Tensor:
    """Registry backend: ``method``'s pattern estimation then the block-sparse kernel.

    Args follow :mod:`tsa_core.backends`; ``params`` are the method's hyper-parameters
    (e.g. ``gamma``, ``tau``, ``block_size``, ``min_budget`` for FlexPrefill). ``stats``: an
    optional dict filled with the call's statistics (see the module docstring).
    """
    B, Hq, Hkv, L, D = check_qkv(q, k, v)
    prm = make_params(method, **params)
    m = get_method(method)
    fn = m.triton if resolve_impl(impl, q.device) == "triton" else m.naive
    if valid_len is None:
        lens = [L] * B
        segments = [(slice(None), L)]
    else:
        lens = [int(n) for n in valid_len.tolist()]
        if len(lens) != B or any(not (1 <= n <= L) for n in lens):
            raise ValueError(f"valid_len must hold {B} lengths in [1, {L}], got {lens}")
        segments = [(slice(b, b + 1), n) for b, n in enumerate(lens)]
    out = torch.empty_like(q) if valid_len is None else torch.zeros_like(q)
    densities, qa = [], []
    for bsl, n in segments:
        qs, ks, vs = q[bsl, :, :n], k[bsl, :, :n], v[bsl, :, :n]
        result = fn(qs, ks, prm, scale=scale)
        pattern, info = result if isinstance(result, tuple) else (result, None)
        run_with_pattern(qs, ks, vs, pattern, scale=scale, impl=impl, executor=executor,
                         out=out[bsl, :, :n])
        dens = pattern.density()
        densities.extend(dens[i] for i in range(dens.shape[0]))
        if info is not None and getattr(info, "query_aware", None) is not None:
            qa.extend(info.query_aware[i] for i in range(info.query_aware.shape[0]))
    raw = {"method": method, "impl": resolve_impl(impl, q.device), "executor": executor,
           "block_size": prm.block_size, "seq_lens": tuple(lens), "params": repr(prm),
           "_density": densities, "_query_aware": qa}
    _LAST.clear()
    _LAST.update(raw)
    if stats is not None:
        stats.update(_materialize(raw))
    return out
