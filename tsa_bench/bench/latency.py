"""Attention-only latency of dense attention vs TSA (our kernels) vs the PyTorch composition.

For one sequence length and one TSA setting it measures, on the same inputs and GPU:

* ``dense``: the dense kernel on the full sequence;
* ``tsa``: each stage of our pipeline on its own (score, select, gather, attention on the
  kept tokens, scatter) and the whole ``tsa_attention`` call (``total``);
* ``tsa-torch``: the same stages of :mod:`tsa_bench.bench.torch_pipeline` (batch 1 only).

Derived per method: overhead (all stages but attention) and its fraction of the total, the
one-layer speedup ``dense / total`` and the all-layer speedup the paper reports,
``dense / ((1 - f) * dense + f * total)`` with ``f`` the fraction of sparse layers.
Every measurement is gated by a correctness check on a subset of heads of every batch element
(see :func:`check`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from tsa_bench.bench import torch_pipeline as tp
from tsa_bench.bench.timing import Timing, time_fn
from tsa_bench.results import row
from tsa_core import TSAConfig, get_backend, tsa_attention
from tsa_core.pipeline import NAIVE_OPS, TRITON_OPS, cuda_graphs_enabled, resolve_ops, selection_graph
from tsa_core.selection import layer_budget

STAGES = ("score", "select", "gather", "attention", "scatter")


@dataclass
class Case:
    """One point of the sweep."""

    seq_len: int
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    config: TSAConfig
    dense: str
    method: str = "tsa"          # "tsa", "<sparse>" or "<sparse>+tsa"
    sparse_frac: float = 0.5
    torch_baseline: bool = True
    check_heads: int = 2
    identity: Dict[str, object] = field(default_factory=dict)


def _bytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _run_stages(ops, q, k, v, cfg: TSAConfig, backend, scale: float):
    """One pass of our pipeline, stage by stage; returns every intermediate."""
    L, W = q.shape[2], cfg.window
    st = {"scores": ops.score(q, k, W, scale)}
    st["pooled"], layer = ops.pool(st["scores"], cfg.pool_kernel)
    st["keep"], _ = layer_budget(layer, cfg)
    st["order"] = ops.select(st["pooled"], st["keep"], L)
    budget = st["keep"].cpu()
    st["n_kept"] = st["keep"] + W
    st["n_max"] = int(budget.max()) + W
    st["qkv_c"] = ops.compress(q, k, v, st["order"], st["n_max"])
    st["out_c"] = backend(*st["qkv_c"], scale=scale)
    st["out"] = ops.decompress(st["out_c"], st["order"], st["n_kept"], L)
    return st


def _select_stage(ops, scores, cfg, L):
    """Selection as the pipeline runs it (a CUDA-graph replay on GPUs; here with one extra
    copy of the scores into the graph's buffer), plus the pipeline's one host sync."""
    if ops is TRITON_OPS and scores.device.type == "cuda" and cuda_graphs_enabled():
        B, H, _ = scores.shape
        keep, _, order = selection_graph(ops, B, H, L, cfg, scores.device).run(scores)
    else:
        pooled, layer = ops.pool(scores, cfg.pool_kernel)
        keep, _ = layer_budget(layer, cfg)
        order = ops.select(pooled, keep, L)
    keep.cpu()
    return order


def check(q, k, v, st, cfg: TSAConfig, scale: float, heads: List[int],
          dense_kernel: bool = True) -> Dict[str, float]:
    """Correctness of one TSA run on a subset of heads of every batch element, against
    PyTorch references. Each metric is the worst over the (element, head) pairs checked.

    * scores: our kernel vs the float32 reference (relative RMS error);
    * selection: the kernel's permutation equals the reference's on the same pooled scores,
      for every element (each has its own budget ``keep[b]``);
    * output: each element's kept rows vs float64 attention over the same kept set, with the
      STYLE.md rule (error at most 2x that of a plain PyTorch run in the input dtype, or 1e-5
      in fp32); dropped rows exactly zero.
    """
    B, L = q.shape[0], q.shape[2]
    G = q.shape[1] // k.shape[1]
    out: Dict[str, float] = {}
    s_err = 0.0
    for h in heads:
        ref = NAIVE_OPS.score(q[:, h:h + 1], k[:, h // G:h // G + 1], cfg.window, scale)
        got = st["scores"][:, h:h + 1]
        for b in range(B):
            s_err = max(s_err, ((got[b] - ref[b]).norm() / ref[b].norm()).item())
    out["score_rel_err"] = s_err
    sub_pooled = st["pooled"][:, heads].contiguous()
    ref_order = NAIVE_OPS.select(sub_pooled, st["keep"], L)
    out["select_equal"] = float(torch.equal(ref_order, st["order"][:, heads]))
    o_err, lp_err, zero_ok = 0.0, 0.0, True
    for b in range(B):
        n = int(st["n_kept"][b])
        for h in heads:
            idx = st["order"][b, h, :n].long()
            got = st["out"][b, idx, h].double()
            if dense_kernel:
                qc, kc, vc = q[b, h, idx], k[b, h // G, idx], v[b, h // G, idx]
                ref = _causal_attention(qc.double(), kc.double(), vc.double(), scale)
                lowp = _causal_attention(qc, kc, vc, scale).double()
            else:       # a sparse kernel ran on the kept tokens: the scatter must hold its rows
                ref = st["out_c"][b, h, :n].double()
                lowp = ref
            o_err = max(o_err, ((got - ref).norm() / ref.norm()).item())
            lp_err = max(lp_err, ((lowp - ref).norm() / ref.norm()).item())
            dropped = torch.ones(L, dtype=torch.bool, device=q.device)
            dropped[idx] = False
            zero_ok &= bool((st["out"][b, dropped, h] == 0).all())
    out["out_rel_err"] = o_err
    out["lowp_rel_err"] = lp_err
    out["dropped_zero"] = float(zero_ok)
    tol_out = max(2.0 * lp_err, 1e-5)
    tol_score = 1e-5 if q.dtype == torch.float32 else 2e-2
    out["passed"] = float(o_err <= tol_out and s_err <= tol_score and out["select_equal"] == 1.0 and zero_ok)
    return out


def _causal_attention(q, k, v, scale, chunk: int = 4096):
    """Causal attention of one head ``[N, D]`` in the inputs' dtype, query-chunked."""
    N = q.shape[0]
    out = torch.empty_like(q)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        logits = (q[s:e] @ k[:e].T).float() * scale
        mask = torch.arange(e, device=q.device)[None, :] > torch.arange(s, e, device=q.device)[:, None]
        p = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1)
        out[s:e] = (p.to(q.dtype) @ v[:e])
    return out


def measure(case: Case, inputs, device: torch.device, *, reps: int = 0, warmup: int = 3,
            budget_s: float = 1.5, dense_cache: Optional[Dict[tuple, Timing]] = None) -> List[dict]:
    """Measure one case on a list of input sets (rotated between calls); return tidy rows.

    ``dense_cache`` keeps the dense timing per (length, batch, backend) across the cases of a
    sweep that share inputs, so the slowest measurement is made once.
    """
    cfg, L = case.config, case.seq_len
    sparse_name = None if case.method == "tsa" else case.method.split("+")[0]
    with_tsa = case.method == "tsa" or case.method.endswith("+tsa")
    backend = get_backend(sparse_name or case.dense)
    dense_backend = get_backend(case.dense)
    scale = 1.0 / math.sqrt(case.head_dim)
    ops = resolve_ops("auto", device)
    ident = dict(case.identity, seq_len=L, batch=case.batch, heads=case.heads, kv_heads=case.kv_heads,
                 head_dim=case.head_dim, dtype=str(case.dtype).replace("torch.", ""),
                 tau=cfg.tau if cfg.keep_ratio is None else None, keep_ratio=cfg.keep_ratio,
                 backend=backend.name)
    heads = list(range(min(case.check_heads, case.heads)))
    nset = len(inputs)
    tkw = dict(reps=reps, warmup=warmup, budget_s=budget_s)
    rows: List[dict] = []

    def add_timing(method: str, stage: str, t: Timing, checked=None):
        rows.append(row("latency_ms", t.median, lo=t.p20, hi=t.p80, n=t.n, checked=checked,
                        method=method, stage=stage, **ident))

    dense_key = (L, case.batch, dense_backend.name)
    if dense_cache is not None and dense_key in dense_cache:
        t_dense = dense_cache[dense_key]
    else:
        t_dense = time_fn(lambda i: dense_backend(*inputs[i % nset], scale=scale), device, **tkw)
        if dense_cache is not None:
            dense_cache[dense_key] = t_dense
    dense_ident = dict(ident, backend=dense_backend.name)
    rows.append(row("latency_ms", t_dense.median, lo=t_dense.p20, hi=t_dense.p80, n=t_dense.n,
                    method="dense", stage="total", **dense_ident))
    t_sparse_full = None
    if sparse_name is not None:
        key = (L, case.batch, sparse_name, "alone")
        if dense_cache is not None and key in dense_cache:
            t_sparse_full = dense_cache[key]
        else:
            srows, t_sparse_full, ok = measure_sparse_alone(sparse_name, dict(ident, tau=None, keep_ratio=None),
                                                            inputs, device, scale, tkw, heads)
            srows += _derived(sparse_name, t_dense.median, t_sparse_full.median, 0.0, t_sparse_full.median, 1.0,
                              dict(ident, tau=None, keep_ratio=None), ok)
            rows += [r for r in srows if r["metric"] not in ("overhead_ms", "overhead_frac", "overhead_inline_ms",
                                                             "total_over_kept_attention")]
            if dense_cache is not None:
                dense_cache[key] = t_sparse_full
        if not with_tsa:
            return rows
    # -- our pipeline: intermediates per input set, correctness gate on set 0 --------------
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    inter = [_run_stages(ops, *inputs[i], cfg, backend, scale) for i in range(nset)]
    st0 = inter[0]
    tsa_name = "tsa" if sparse_name is None else f"{sparse_name}+tsa"
    gate = check(*inputs[0], st0, cfg, scale, heads, dense_kernel=sparse_name is None)
    passed = bool(gate.pop("passed"))
    for name, value in gate.items():
        rows.append(row(name, value, checked=passed, method=tsa_name, stage="check", **ident))
    if sparse_name is not None:   # the sparse kernel on the kept tokens, against its own pattern
        from tsa_core.sparse.methods import stages
        estimate, run = stages(sparse_name)
        pat = estimate(st0["qkv_c"][0], st0["qkv_c"][1], scale)
        sgate = check_sparse(*st0["qkv_c"], run(*st0["qkv_c"], pat, scale), pat, scale, heads)
        ok = bool(sgate.pop("passed"))
        passed &= ok
        for name, value in sgate.items():
            rows.append(row(name, value, checked=ok, method=tsa_name, stage="check", **ident))
        rows.append(row("block_density", float(pat.density().float().mean()), method=tsa_name,
                        stage="estimate", **ident))
        t_est = time_fn(lambda i: estimate(inter[i % nset]["qkv_c"][0], inter[i % nset]["qkv_c"][1], scale),
                        device, **tkw)
        rows.append(row("latency_ms", t_est.median, lo=t_est.p20, hi=t_est.p80, n=t_est.n, checked=passed,
                        method=tsa_name, stage="estimate", **ident))

    t = {
        "score": time_fn(lambda i: ops.score(inputs[i % nset][0], inputs[i % nset][1], cfg.window, scale),
                         device, **tkw),
        "select": time_fn(lambda i: _select_stage(ops, inter[i % nset]["scores"], cfg, L), device, **tkw),
        "gather": time_fn(lambda i: ops.compress(*inputs[i % nset], inter[i % nset]["order"],
                                                 inter[i % nset]["n_max"]), device, **tkw),
        "attention": time_fn(lambda i: backend(*inter[i % nset]["qkv_c"], scale=scale), device, **tkw),
        "scatter": time_fn(lambda i: ops.decompress(inter[i % nset]["out_c"], inter[i % nset]["order"],
                                                    inter[i % nset]["n_kept"], L), device, **tkw),
    }
    for stage, tt in t.items():
        add_timing(tsa_name, stage, tt, passed)
    st0 = {"out": st0["out"]}
    del inter
    # extra memory of one whole call, beyond its inputs and its [B, L, H, D] output
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    out, stats = tsa_attention(*inputs[0], cfg, backend, scale=scale)
    # the whole call (CUDA-graph selection on GPUs) must give what the stage-by-stage run gave
    same = bool(torch.equal(out, st0["out"])) or bool(stats.dense)
    rows.append(row("pipeline_equals_stages", float(same), checked=same, method=tsa_name, stage="check", **ident))
    passed &= same
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - base - _bytes(out)
        n = max(stats.kept)
        compressed = 4 * case.batch * case.heads * n * case.head_dim * inputs[0][0].element_size()
        rows.append(row("extra_mem_bytes", extra, method=tsa_name, stage="total", **ident))
        rows.append(row("compressed_bytes", compressed, method=tsa_name, stage="total", **ident))
        rows.append(row("extra_mem_ratio", extra / compressed, method=tsa_name, stage="total", **ident))
    del out
    t_total = time_fn(lambda i: tsa_attention(*inputs[i % nset], cfg, backend, scale=scale), device, **tkw)
    add_timing(tsa_name, "total", t_total, passed)
    for b in range(case.batch):
        rows.append(row("kept_tokens", stats.kept[b], method=tsa_name, stage="select", **ident))
        rows.append(row("keep_fraction", stats.keep_fraction[b], method=tsa_name, stage="select", **ident))
        rows.append(row("sparsity", stats.sparsity[b], method=tsa_name, stage="select", **ident))
        rows.append(row("pruned_mass", stats.pruned_mass[b], method=tsa_name, stage="select", **ident))
    rows.append(row("dense_fallback", float(stats.dense), method=tsa_name, stage="select", **ident))
    # the other (1 - f) of the layers run the same kernel on the full sequence: dense for TSA
    # alone, the sparse method for "<sparse>+tsa" (how the paper composes them)
    other = t_dense.median if t_sparse_full is None else t_sparse_full.median
    rows += _derived(tsa_name, t_dense.median, t_total.median, sum(t[s].median for s in STAGES if s != "attention"),
                     t["attention"].median, case.sparse_frac, ident, passed, other_ms=other)
    if sparse_name is not None:
        rows.append(row("speedup_vs_method_alone", t_sparse_full.median / ((1 - case.sparse_frac) * t_sparse_full.median
                        + case.sparse_frac * t_total.median), method=tsa_name, stage="total", checked=passed,
                        **dict(ident, layer=f"frac={case.sparse_frac}")))
        return rows

    # -- the straightforward PyTorch composition, same inputs, same kernel ------------------
    if case.torch_baseline and case.batch == 1:
        tinter = []
        for i in range(nset):
            q, k, v = inputs[i]
            sc = tp.score(q, k, cfg.window, scale)
            idx, _ = tp.select(sc, cfg, L)
            qkv_c = tp.gather(q, k, v, idx)
            tinter.append({"scores": sc, "idx": idx, "qkv_c": qkv_c, "out_c": backend(*qkv_c, scale=scale)})
        tt = {
            "score": time_fn(lambda i: tp.score(inputs[i % nset][0], inputs[i % nset][1], cfg.window, scale),
                             device, **tkw),
            "select": time_fn(lambda i: tp.select(tinter[i % nset]["scores"], cfg, L), device, **tkw),
            "gather": time_fn(lambda i: tp.gather(*inputs[i % nset], tinter[i % nset]["idx"]), device, **tkw),
            "attention": time_fn(lambda i: backend(*tinter[i % nset]["qkv_c"], scale=scale), device, **tkw),
            "scatter": time_fn(lambda i: tp.scatter(tinter[i % nset]["out_c"], tinter[i % nset]["idx"], L),
                               device, **tkw),
        }
        del tinter
        for stage, x in tt.items():
            add_timing("tsa-torch", stage, x, passed)
        t_ttotal = time_fn(lambda i: tp.tsa_attention_torch(*inputs[i % nset], cfg, backend, scale), device, **tkw)
        add_timing("tsa-torch", "total", t_ttotal, passed)
        ov_torch = sum(tt[s].median for s in STAGES if s != "attention")
        rows += _derived("tsa-torch", t_dense.median, t_ttotal.median, ov_torch, tt["attention"].median,
                         case.sparse_frac, ident, passed)
        ov_ours = sum(t[s].median for s in STAGES if s != "attention")
        rows.append(row("overhead_vs_torch", ov_ours / ov_torch, method="tsa", stage="overhead",
                        checked=passed, **ident))
    return rows


def _derived(method, dense_ms, total_ms, overhead_ms, attn_ms, frac, ident, passed,
             other_ms: Optional[float] = None) -> List[dict]:
    """Derived rows; the all-layer mean has ``frac`` of the layers at ``total_ms`` and the rest
    at ``other_ms`` (default: dense)."""
    mean_all = (1.0 - frac) * (dense_ms if other_ms is None else other_ms) + frac * total_ms
    return [
        row("overhead_ms", overhead_ms, method=method, stage="overhead", checked=passed, **ident),
        # in the whole call, host work overlaps GPU work: what the stages really add
        row("overhead_inline_ms", total_ms - attn_ms, method=method, stage="overhead", checked=passed, **ident),
        row("overhead_frac", overhead_ms / (overhead_ms + attn_ms), method=method, stage="overhead",
            checked=passed, **ident),
        row("total_over_kept_attention", total_ms / attn_ms, method=method, stage="total", checked=passed, **ident),
        row("speedup_layer", dense_ms / total_ms, method=method, stage="total", checked=passed, **ident),
        row("speedup_all_layers", dense_ms / mean_all, method=method, stage="total", checked=passed,
            **dict(ident, layer=f"frac={frac}")),
    ]


def check_sparse(q, k, v, out, pattern, scale: float, heads: List[int], rows: int = 256) -> Dict[str, float]:
    """A sparse method's output on the last ``rows`` queries of some heads of every batch
    element against float64 attention restricted to the same pattern (``pattern.token_mask``);
    tolerance as in :func:`check`: at most 2x a plain PyTorch run in the input dtype."""
    B, L = q.shape[0], q.shape[2]
    G = q.shape[1] // k.shape[1]
    s0 = max(0, L - rows)
    err, lp = 0.0, 0.0

    def attn(qq, kk, vv, allowed):
        logits = (qq[s0:] @ kk.T).float() * scale
        p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        return p.to(qq.dtype) @ vv

    for b in range(B):
        for h in heads:
            allowed = pattern.token_mask(b, h, s0, L)
            qh, kh, vh = q[b, h], k[b, h // G], v[b, h // G]
            ref = attn(qh.double(), kh.double(), vh.double(), allowed)
            low = attn(qh, kh, vh, allowed).double()
            got = out[b, h, s0:].double()
            err = max(err, ((got - ref).norm() / ref.norm()).item())
            lp = max(lp, ((low - ref).norm() / ref.norm()).item())
    tol = max(2.0 * lp, 1e-5)
    return {"sparse_rel_err": err, "sparse_lowp_rel_err": lp, "passed": float(err <= tol)}


def measure_sparse_alone(name: str, ident: dict, inputs, device, scale: float, tkw: dict,
                         heads: List[int]):
    """A sparse method on the full sequence: pattern estimation, the kernel, the whole call."""
    from tsa_core.sparse.methods import stages

    backend = get_backend(name)
    estimate, run = stages(name)
    nset = len(inputs)
    patterns = [estimate(q, k, scale) for q, k, _ in inputs]
    out = run(*inputs[0], patterns[0], scale)
    gate = check_sparse(*inputs[0], out, patterns[0], scale, heads)
    passed = bool(gate.pop("passed"))
    del out
    ident = dict(ident, backend=name)
    rows = [row(k_, v_, checked=passed, method=name, stage="check", **ident) for k_, v_ in gate.items()]
    t_est = time_fn(lambda i: estimate(inputs[i % nset][0], inputs[i % nset][1], scale), device, **tkw)
    t_run = time_fn(lambda i: run(*inputs[i % nset], patterns[i % nset], scale), device, **tkw)
    t_total = time_fn(lambda i: backend(*inputs[i % nset], scale=scale), device, **tkw)
    for stage, t in (("estimate", t_est), ("attention", t_run), ("total", t_total)):
        rows.append(row("latency_ms", t.median, lo=t.p20, hi=t.p80, n=t.n, checked=passed,
                        method=name, stage=stage, **ident))
    dens = float(patterns[0].density().float().mean())
    rows.append(row("block_density", dens, method=name, stage="estimate", **ident))
    rows.append(row("estimate_frac", t_est.median / t_total.median, method=name, stage="estimate",
                    checked=passed, **ident))
    return rows, t_total, passed
