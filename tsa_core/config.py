"""Frozen, validated TSA configuration."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Tuple


@dataclass(frozen=True)
class TSAConfig:
    """Hyper-parameters of Token Sparse Attention for one layer (or a set of layers).

    Defaults follow the paper's code (PAPER.md §1.2): ``tau=0.005``, ``window=128``,
    ``pool_kernel=7``, ``min_keep=1024``.

    Attributes:
        tau: token coverage, the attention mass of the least important tail that may be pruned.
            ``0`` disables TSA (the layer runs dense). Range ``[0, 1)``.
        window: number of most recent queries used for scoring; the last ``window`` tokens
            are always kept. ``>= 1``.
        pool_kernel: odd width of the average pooling along tokens (zero padding, divisor
            ``pool_kernel`` everywhere, as ``F.avg_pool1d(k, stride=1, padding=k//2)``).
        min_keep: minimum number of *prefix* tokens kept. ``>= 1``. Sequences with
            ``L <= min_keep + window`` run dense.
        keep_ratio: if set, overrides the coverage rule: each layer keeps
            ``max(min_keep, round(keep_ratio * (L - window)))`` prefix tokens. ``(0, 1]``.
            Used to force a sparsity level in benchmarks (the paper's fixed-ratio ablation).
        sparse_layers: indices of the layers TSA applies to, or ``None`` for "decided by the
            caller" (the transformers integration fills it from a preset or a drift profile).
        dropped: what a query row whose token was not selected gets as attention output.
            ``"zero"`` (the paper): exact zeros. ``"local:<w>"`` (``w >= 1``, beyond the paper,
            see docs/dropped-rows.md): causal attention of that query over the original keys
            and values at positions ``max(0, i - w + 1) .. i``, same softmax scale. Kept rows,
            the selection and :class:`~tsa_core.TSAStats` are the same for both.
    """

    tau: float = 0.005
    window: int = 128
    pool_kernel: int = 7
    min_keep: int = 1024
    keep_ratio: Optional[float] = None
    sparse_layers: Optional[Tuple[int, ...]] = field(default=None)
    dropped: str = "zero"

    def __post_init__(self) -> None:
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)):
            raise ValueError(f"tau must be a number in [0, 1), got {self.tau!r}")
        if not (0.0 <= float(self.tau) < 1.0):
            raise ValueError(f"tau must be in [0, 1), got {self.tau}")
        _check_int("window", self.window, 1)
        _check_int("min_keep", self.min_keep, 1)
        if isinstance(self.pool_kernel, bool) or not isinstance(self.pool_kernel, int) \
                or self.pool_kernel < 1 or self.pool_kernel % 2 == 0:
            raise ValueError(
                f"pool_kernel must be a positive odd integer (1, 3, 5, 7, ...), got {self.pool_kernel!r}")
        if self.keep_ratio is not None and not (0.0 < float(self.keep_ratio) <= 1.0):
            raise ValueError(f"keep_ratio must be in (0, 1] or None, got {self.keep_ratio}")
        if self.sparse_layers is not None:
            layers = tuple(self.sparse_layers)
            for i in layers:
                if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                    raise ValueError(f"sparse_layers must hold non-negative integers, got {i!r}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"sparse_layers has duplicates: {layers}")
            object.__setattr__(self, "sparse_layers", tuple(sorted(layers)))
        parse_dropped(self.dropped)

    @property
    def local_window(self) -> int:
        """``w`` of ``dropped="local:<w>"``; ``0`` when dropped rows stay zero."""
        return parse_dropped(self.dropped)

    @property
    def enabled(self) -> bool:
        """False when the configuration can never sparsify (tau = 0 and no forced ratio)."""
        return self.keep_ratio is not None or self.tau > 0

    def runs_dense(self, seq_len: int) -> bool:
        """True when a layer of this length skips TSA entirely (no scoring, no gather)."""
        return (not self.enabled) or seq_len <= self.min_keep + self.window

    def is_sparse_layer(self, layer_idx: int) -> bool:
        return self.sparse_layers is None or layer_idx in self.sparse_layers


_LOCAL = re.compile(r"local:([1-9][0-9]*)")


def parse_dropped(spec) -> int:
    """The local window ``w`` of a ``dropped`` spec: ``"zero"`` -> 0, ``"local:<w>"`` -> ``w``.

    ``w`` is written as a positive decimal integer without sign or leading zeros; anything
    else raises a ValueError naming the field.
    """
    if isinstance(spec, str):
        if spec == "zero":
            return 0
        m = _LOCAL.fullmatch(spec)
        if m:
            return int(m.group(1))
    raise ValueError(f"dropped must be 'zero' or 'local:<w>' with w a positive integer "
                     f"(e.g. 'local:64'), got {spec!r}")


def _check_int(name: str, value, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
