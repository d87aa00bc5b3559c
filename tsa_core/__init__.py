"""Token Sparse Attention (TSA) core.

Tensor layout, used by every op in this package:

* ``q``: ``[B, Hq, L, D]``; ``k`` and ``v``: ``[B, Hkv, L, D]`` with ``Hq % Hkv == 0``
  (grouped-query attention: query head ``h`` reads KV head ``h // (Hq // Hkv)``; K/V are
  never repeated in memory). Any strides are accepted.
* Compressed tensors (after the gather): ``[B, Hq, N, D]`` contiguous, one compact copy per
  *query* head, because every query head selects its own tokens.
* The one exception is the final output of :func:`tsa_attention`, ``[B, L, Hq, D]``: the
  layout the output projection consumes (and what transformers' attention functions return),
  written directly by the scatter so no transpose copy is needed.

Importing this package never touches CUDA: kernels are compiled on first use.
"""
from tsa_core.config import TSAConfig
from tsa_core.pipeline import TSAStats, tsa_attention
from tsa_core.backends import available_backends, get_backend, register_backend

__all__ = [
    "TSAConfig",
    "TSAStats",
    "tsa_attention",
    "available_backends",
    "get_backend",
    "register_backend",
]
__version__ = "0.1.0"
