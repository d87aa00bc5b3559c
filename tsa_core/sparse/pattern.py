"""The block pattern every sparse method produces and the block-sparse kernel consumes.

A pattern says, per (batch, query head) and per query block of ``block_size`` rows, which
key blocks of ``block_size`` keys are computed (``kv_idx`` / ``kv_cnt``, the CSR-like list
the kernel reads), optionally plus individual key *columns* (MInference's vertical lines)
that are attended on top of the active blocks. Causality is always applied on top: a query
at position ``i`` never sees a key ``j > i``, whatever the pattern says.

Density (:meth:`BlockPattern.density`) is the fraction of *causal* blocks that are active,
i.e. the lower triangle including the diagonal is the denominator (1.0 = dense causal
attention). FlexPrefill's own "computational ratio" divides by the full square instead,
which is about half of this number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from tsa_core._checks import interpreter_on


def check_block_size(block_size: int, name: str = "block_size") -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16 \
            or block_size & (block_size - 1):
        raise ValueError(f"{name} must be a power of two >= 16, got {block_size!r}")
    return block_size


def causal_block_grid(n_qb: int, n_kb: int, device) -> torch.Tensor:
    """``[n_qb, n_kb]`` bool: key block ``c`` is causally visible from query block ``r`` (c <= r)."""
    r = torch.arange(n_qb, device=device).view(n_qb, 1)
    c = torch.arange(n_kb, device=device).view(1, n_kb)
    return c <= r


def mask_to_lists(mask: torch.Tensor):
    """Compact a bool block mask ``[B, H, n_qb, n_kb]`` into ascending index lists.

    Returns ``(kv_idx int32 [B, H, n_qb, n_kb], kv_cnt int32 [B, H, n_qb])``: the first
    ``kv_cnt`` entries of each row are the active key blocks in ascending order; the rest is
    zero. No host synchronisation (the list width is ``n_kb``). On CUDA (or under the
    interpreter) one Triton pass does it (:func:`tsa_core.sparse.pattern_kernel.compact_mask_triton`).
    """
    if mask.device.type == "cuda" or interpreter_on():
        from tsa_core.sparse.pattern_kernel import compact_mask_triton    # lazy: no Triton at import
        return compact_mask_triton(mask)
    return mask_to_lists_torch(mask)


def mask_to_lists_torch(mask: torch.Tensor):
    """PyTorch version of :func:`mask_to_lists` (cumsum + scatter)."""
    B, H, n_qb, n_kb = mask.shape
    m = mask.to(torch.int32)
    pos = torch.cumsum(m, dim=-1, dtype=torch.int32) - 1
    target = torch.where(mask, pos, torch.full_like(pos, n_kb)).long()   # inactive -> dump column
    src = torch.arange(n_kb, device=mask.device, dtype=torch.int32).expand(B, H, n_qb, n_kb)
    buf = torch.zeros((B, H, n_qb, n_kb + 1), device=mask.device, dtype=torch.int32)
    buf.scatter_(-1, target, src)
    return buf[..., :n_kb].contiguous(), m.sum(-1, dtype=torch.int32)


@dataclass(frozen=True)
class BlockPattern:
    """Active key blocks (and optional key columns) per (batch, query head, query block).

    Attributes:
        block_mask: ``[B, H, n_qb, n_kb]`` bool, ``n_qb = n_kb = ceil(L / block_size)``.
        kv_idx: ``[B, H, n_qb, n_kb]`` int32, active key blocks of each row, ascending, first
            ``kv_cnt`` entries valid.
        kv_cnt: ``[B, H, n_qb]`` int32.
        block_size: tile edge, a power of two >= 16.
        seq_len: ``L``.
        cols: ``None`` or ``[B, H, C]`` int32 key positions attended in addition to the
            blocks, distinct and ascending per (b, h) (MInference verticals). Columns that fall inside an
            active block of a row are skipped for that row (no double counting).
        col_cnt: ``[B, H, n_qb]`` int32, how many leading entries of ``cols`` row ``r`` reads
            (the columns before the row's last query: ``cols < min(L, (r + 1) * block_size)``).
    """

    block_mask: torch.Tensor
    kv_idx: torch.Tensor
    kv_cnt: torch.Tensor
    block_size: int
    seq_len: int
    cols: Optional[torch.Tensor] = None
    col_cnt: Optional[torch.Tensor] = None

    @classmethod
    def from_mask(cls, block_mask: torch.Tensor, block_size: int, seq_len: int,
                  cols: Optional[torch.Tensor] = None) -> "BlockPattern":
        """Build from a bool block mask; blocks above the diagonal are dropped (causal)."""
        check_block_size(block_size)
        if block_mask.dim() != 4 or block_mask.dtype != torch.bool:
            raise ValueError(f"block_mask must be a 4-d bool tensor, got {block_mask.dtype} "
                             f"{tuple(block_mask.shape)}")
        n_b = -(-seq_len // block_size)
        if block_mask.shape[-2:] != (n_b, n_b):
            raise ValueError(f"block_mask must end with ({n_b}, {n_b}) for seq_len {seq_len} and "
                             f"block_size {block_size}, got {tuple(block_mask.shape)}")
        mask = block_mask & causal_block_grid(n_b, n_b, block_mask.device)
        kv_idx, kv_cnt = mask_to_lists(mask)
        col_cnt = None
        if cols is not None:
            B, H = block_mask.shape[:2]
            if cols.dim() != 3 or cols.shape[:2] != (B, H):
                raise ValueError(f"cols must be [B, H, C] = [{B}, {H}, C], got {tuple(cols.shape)}")
            cols = cols.to(torch.int32).sort(dim=-1).values.contiguous()
            if cols.numel() and (bool((cols[..., 1:] == cols[..., :-1]).any())
                                 or int(cols.min()) < 0 or int(cols.max()) >= seq_len):
                raise ValueError(f"cols must be distinct key positions in [0, {seq_len}) per (b, h)")
            row_end = torch.clamp(torch.arange(1, n_b + 1, device=cols.device) * block_size,
                                  max=seq_len).to(torch.int32)
            col_cnt = torch.searchsorted(cols, row_end.expand(B, H, n_b).contiguous()).to(torch.int32)
        return cls(mask, kv_idx, kv_cnt, block_size, seq_len, cols, col_cnt)

    @classmethod
    def dense(cls, batch: int, heads: int, seq_len: int, block_size: int, device) -> "BlockPattern":
        """Every causal block active: the pattern equals dense causal attention."""
        n_b = -(-seq_len // block_size)
        mask = causal_block_grid(n_b, n_b, device).expand(batch, heads, n_b, n_b).contiguous()
        return cls.from_mask(mask, block_size, seq_len)

    @property
    def batch(self) -> int:
        return self.block_mask.shape[0]

    @property
    def heads(self) -> int:
        return self.block_mask.shape[1]

    @property
    def num_blocks(self) -> int:
        return self.block_mask.shape[-1]

    def density(self) -> torch.Tensor:
        """``[B, H]`` float: computed entries over causal entries, at block granularity:
        active causal blocks / causal blocks, where a column attended by one query block (and
        not already inside one of its active blocks) adds ``1 / block_size`` of a block."""
        n = self.num_blocks
        active = self.kv_cnt.sum(-1).double()
        if self.cols is not None:
            per_block = torch.zeros(self.cols.shape[:2] + (n,), device=self.cols.device, dtype=torch.float64)
            per_block.scatter_add_(-1, (self.cols // self.block_size).long(),
                                   torch.ones_like(self.cols, dtype=torch.float64))
            rows_per_block = self.block_mask.sum(dim=-2, dtype=torch.float64)          # [B, H, n]
            inside = (rows_per_block * per_block).sum(-1)
            active = active + (self.col_cnt.sum(-1).double() - inside) / self.block_size
        return (active / (n * (n + 1) / 2)).float()

    def token_mask(self, b: int, h: int, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """``[stop - start, L]`` bool: the exact (query, key) entries this pattern computes for
        queries ``start..stop-1`` (default all), causal included."""
        L, bs = self.seq_len, self.block_size
        stop = L if stop is None else stop
        dev = self.block_mask.device
        q_pos = torch.arange(start, stop, device=dev)
        k_pos = torch.arange(L, device=dev)
        m = self.block_mask[b, h][q_pos // bs][:, k_pos // bs]
        if self.cols is not None:
            colmask = torch.zeros(L, dtype=torch.bool, device=dev)
            colmask[self.cols[b, h].long()] = True
            m = m | colmask.view(1, L)
        return m & (k_pos.view(1, L) <= q_pos.view(-1, 1))

    def select(self, batch: slice = slice(None), heads: slice = slice(None)) -> "BlockPattern":
        """A view of some batch elements / heads (for checking a subset of heads)."""
        pick = lambda t: None if t is None else t[batch, heads].contiguous()  # noqa: E731
        return BlockPattern(pick(self.block_mask), pick(self.kv_idx), pick(self.kv_cnt), self.block_size,
                            self.seq_len, pick(self.cols), pick(self.col_cnt))
