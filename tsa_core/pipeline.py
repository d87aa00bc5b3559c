"""The TSA layer pipeline: score, select, compress, attend, decompress.

Batch > 1: every batch element gets its own budget (its own Dynamic Token Coverage count)
and its own per-head selection, exactly as if it ran alone. The compressed tensors of the
batch are padded at the end to the largest kept count ``N = max_b n_b``; the padding rows
come after every valid row, so a causal kernel never lets a valid query see them, and the
scatter skips them. The cost is attention work on ``B * N`` rows instead of ``sum_b n_b``
(at most ``(N^2 - n_b^2)`` extra causal entries per element), plus the gather/scatter of
the padding rows. The only device-to-host synchronisation is one copy of the per-element
budgets (needed to size the compressed tensors), once per sparse layer.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch

from tsa_core._checks import check_qkv, check_triton_device, interpreter_on
from tsa_core.backends import AttentionBackend, get_backend
from tsa_core.config import TSAConfig
from tsa_core.dropped import fill_dropped_local
from tsa_core.gather import (compress_qkv_naive, compress_qkv_triton, decompress_output_naive,
                             decompress_output_triton)
from tsa_core.scoring import score_window_naive, score_window_triton
from tsa_core.selection import (layer_budget, pool_scores_naive, pool_scores_triton,
                                select_topk_naive, select_topk_triton)


class TSAOps(NamedTuple):
    """One implementation of every TSA op (the naive twins or the Triton kernels)."""

    score: Callable
    pool: Callable
    select: Callable
    compress: Callable
    decompress: Callable


NAIVE_OPS = TSAOps(score_window_naive, pool_scores_naive, select_topk_naive,
                   compress_qkv_naive, decompress_output_naive)
TRITON_OPS = TSAOps(score_window_triton, pool_scores_triton, select_topk_triton,
                    compress_qkv_triton, decompress_output_triton)


def resolve_ops(impl: str, device: torch.device) -> TSAOps:
    """``impl``: ``"triton"``, ``"naive"`` or ``"auto"`` (Triton on CUDA or under the
    interpreter, else the PyTorch reference)."""
    if impl == "naive":
        return NAIVE_OPS
    if impl == "triton":
        check_triton_device(torch.empty(0, device=device), "tsa_attention(impl='triton')")
        return TRITON_OPS
    if impl == "auto":
        return TRITON_OPS if (device.type == "cuda" or interpreter_on()) else NAIVE_OPS
    raise ValueError(f"impl must be 'auto', 'triton' or 'naive', got {impl!r}")


@dataclass(frozen=True)
class TSAStats:
    """What one TSA layer did. Per-batch-element tuples have length ``B``.

    Attributes:
        seq_len: ``L``. window: ``W``.
        dense: True if the layer ran dense attention on the full sequence.
        reason: why it ran dense (``""`` when it did not).
        budget: prefix tokens kept per element (``L - W`` when dense).
        kept: compressed length per element, ``budget + W`` (``L`` when dense); every head of
            an element keeps this many tokens (the budget is shared by the heads).
        pruned_mass: layer-level attention mass of the dropped tokens, per element.
    """

    seq_len: int
    window: int
    num_heads: int
    dense: bool
    reason: str
    budget: Tuple[int, ...]
    kept: Tuple[int, ...]
    pruned_mass: Tuple[float, ...]

    @property
    def kept_per_head(self) -> Tuple[Tuple[int, ...], ...]:
        """``[B][Hq]`` kept tokens per head (equal within an element by construction)."""
        return tuple((n,) * self.num_heads for n in self.kept)

    @property
    def keep_fraction(self) -> Tuple[float, ...]:
        return tuple(n / self.seq_len for n in self.kept)

    @property
    def sparsity(self) -> Tuple[float, ...]:
        """Fraction of causal attention-map entries skipped (the paper's Table 3 quantity)."""
        full = self.seq_len * (self.seq_len + 1) / 2
        return tuple(1.0 - (n * (n + 1) / 2) / full for n in self.kept)


_GRAPHS_SETTING: list = []     # stack of selection_graphs(...) settings, innermost last


def cuda_graphs_enabled() -> bool:
    """Selection runs as a captured CUDA graph on GPUs unless ``TSA_CUDA_GRAPHS=0`` or inside
    ``selection_graphs(False)``."""
    if _GRAPHS_SETTING:
        return _GRAPHS_SETTING[-1]
    return os.environ.get("TSA_CUDA_GRAPHS", "1") not in ("0", "")


@contextlib.contextmanager
def selection_graphs(enabled: bool):
    """Within this block, capture-and-replay of the selection steps is on or off.

    A graph is captured per sequence length (its buffers have that shape). That pays off when
    one length repeats (benchmarks, a batch of equal prompts) and costs more than it saves when
    every prompt has its own length (an evaluation over many prompts): there each new length
    means warm-up runs and a capture, so the eager launches are faster."""
    _GRAPHS_SETTING.append(bool(enabled))
    try:
        yield
    finally:
        _GRAPHS_SETTING.pop()


class SelectionGraph:
    """Pooling, budget and top-k of one shape, captured once as a CUDA graph.

    These steps have static shapes (only the kept counts vary, and they stay on the device), so
    ~20 small launches become one replay; the host only waits once, afterwards, for the kept
    counts. The scoring kernel writes straight into :attr:`scores`. Outputs (:attr:`keep`,
    :attr:`pruned`, :attr:`order`) live in the graph's memory and are overwritten by the next
    replay of the same shape, which stream order puts after this layer's gather and scatter.
    Graphs are per device and shape; replays must stay on one stream at a time.
    """

    def __init__(self, ops: TSAOps, batch: int, heads: int, seq_len: int, config: TSAConfig,
                 device: torch.device):
        self.ops, self.config, self.seq_len = ops, config, seq_len
        P = seq_len - config.window
        self.scores = torch.full((batch, heads, P), 1.0 / P, device=device, dtype=torch.float32)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):                    # compile and warm up outside the capture
                self._body()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.keep, self.pruned, self.order = self._body()

    def _body(self):
        pooled, layer = self.ops.pool(self.scores, self.config.pool_kernel)
        keep, pruned = layer_budget(layer, self.config)
        return keep, pruned, self.ops.select(pooled, keep, self.seq_len)

    def run(self, scores: Optional[torch.Tensor] = None):
        """Replay (after copying ``scores`` in, if they were not written in place)."""
        if scores is not None and scores.data_ptr() != self.scores.data_ptr():
            self.scores.copy_(scores)
        self.graph.replay()
        return self.keep, self.pruned, self.order


_GRAPHS: "OrderedDict[tuple, SelectionGraph]" = OrderedDict()
_MAX_GRAPHS = 16


def selection_graph(ops: TSAOps, batch: int, heads: int, seq_len: int, config: TSAConfig,
                    device: torch.device) -> SelectionGraph:
    """The cached :class:`SelectionGraph` of this shape (least recently used ones are dropped)."""
    key = (ops, batch, heads, seq_len, config.window, config.pool_kernel, config.min_keep, config.tau,
           config.keep_ratio, str(device))
    graph = _GRAPHS.pop(key, None)
    if graph is None:
        # ordinary (not inference-mode) buffers, so later calls outside inference mode can
        # still write into them, whichever mode the first call came from
        with torch.inference_mode(False):
            graph = SelectionGraph(ops, batch, heads, seq_len, config, device)
    _GRAPHS[key] = graph
    while len(_GRAPHS) > _MAX_GRAPHS:
        _GRAPHS.popitem(last=False)
    return graph


def _dense(q, k, v, backend: AttentionBackend, scale: float, config: TSAConfig, reason: str):
    B, Hq, L, _ = q.shape
    out = backend(q, k, v, scale=scale).transpose(1, 2)
    P = max(0, L - config.window)
    stats = TSAStats(L, config.window, Hq, True, reason, (P,) * B, (L,) * B, (0.0,) * B)
    return out, stats


def tsa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: TSAConfig,
                  backend: Union[str, AttentionBackend] = "sdpa", *, scale: Optional[float] = None,
                  impl: str = "auto") -> Tuple[torch.Tensor, TSAStats]:
    """Token Sparse Attention for one prefill layer.

    Args:
        q: ``[B, Hq, L, D]`` queries after RoPE; k, v: ``[B, Hkv, L, D]`` (any strides).
        config: :class:`TSAConfig` (tau, window, pooling, min_keep, keep_ratio, dropped).
        backend: registry name or entry of the attention kernel run on the kept tokens
            (and on the full sequence when the layer falls back to dense).
        scale: softmax scale, default ``1 / sqrt(D)``.
        impl: ``"auto"``, ``"triton"`` or ``"naive"`` for the TSA ops.

    Returns:
        ``(out, stats)``: ``out [B, L, Hq, D]``: attention of each kept query over the kept
        keys at original positions ``<=`` its own; at every (token, head) that was dropped,
        exact zeros (``config.dropped="zero"``) or, with ``"local:<w>"``, that query's causal
        attention over the original keys ``max(0, i - w + 1) .. i``
        (:func:`tsa_core.dropped.fill_dropped_local`; kept rows are the same either way).
        ``stats`` is a :class:`TSAStats` (it describes the selection, whatever ``dropped``).
    """
    B, Hq, Hkv, L, D = check_qkv(q, k, v)
    if not isinstance(config, TSAConfig):
        raise ValueError(f"config must be a TSAConfig, got {type(config).__name__}")
    be = get_backend(backend)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not config.enabled:
        return _dense(q, k, v, be, scale, config, "tau = 0")
    if config.runs_dense(L):
        return _dense(q, k, v, be, scale, config,
                      f"seq_len {L} <= min_keep + window = {config.min_keep + config.window}")
    ops = resolve_ops(impl, q.device)
    W, P = config.window, L - config.window
    if ops is TRITON_OPS and q.device.type == "cuda" and cuda_graphs_enabled():
        graph = selection_graph(ops, B, Hq, L, config, q.device)
        ops.score(q, k, W, scale, out=graph.scores)
        keep, pruned, order = graph.run()
    else:
        scores = ops.score(q, k, W, scale)
        pooled, layer = ops.pool(scores, config.pool_kernel)
        keep, pruned = layer_budget(layer, config)
        # selection only needs the budgets on the device: enqueue it before the one host sync,
        # so the GPU keeps working while the host waits for the sizes of the compressed tensors
        order = ops.select(pooled, keep, L)
    host = torch.stack([keep.double(), pruned.double()]).cpu()    # the one host sync
    budget = tuple(int(x) for x in host[0].tolist())
    pruned_mass = tuple(float(x) for x in host[1].tolist())
    if all(b == P for b in budget):
        return _dense(q, k, v, be, scale, config, "nothing to prune under tau")
    n_kept = keep + W
    n_max = max(budget) + W
    qc, kc, vc = ops.compress(q, k, v, order, n_max)
    out_c = be(qc, kc, vc, scale=scale, valid_len=n_kept if B > 1 else None)
    out = ops.decompress(out_c, order, n_kept, L)
    if config.local_window:
        fill_dropped_local(out, q, k, v, order, [b + W for b in budget], config.local_window, scale)
    stats = TSAStats(L, W, Hq, False, "", budget, tuple(b + W for b in budget), pruned_mass)
    return out, stats
