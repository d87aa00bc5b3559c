"""GPU lane: the kernels in bf16 on real hardware (tolerance rule of STYLE.md). ``make test-gpu``."""
import warnings

import pytest
import torch

from conftest import rms_ratio

pytestmark = pytest.mark.gpu


def test_kernels_are_compiled_not_interpreted():
    """The GPU lane runs the real Triton compiler: the interpreter is off and every kernel
    of tsa_core is a compiled ``JITFunction`` (conftest turns the interpreter on only
    without CUDA; an explicit TRITON_INTERPRET=1 would make this fail)."""
    import importlib
    import pkgutil
    import tsa_core
    from tsa_core._checks import interpreter_on
    assert not interpreter_on(), "TRITON_INTERPRET is on in the GPU lane"
    kinds = {}
    for info in pkgutil.walk_packages(tsa_core.__path__, "tsa_core."):
        for name, obj in vars(importlib.import_module(info.name)).items():
            if type(obj).__name__ in ("JITFunction", "InterpretedFunction"):
                kinds[f"{info.name}.{name}"] = type(obj).__name__
    assert len(kinds) >= 10 and set(kinds.values()) == {"JITFunction"}, kinds


def _qkv(B, Hq, Hkv, L, D, seed=0, dtype=torch.bfloat16):
    from tsa_bench.workload import Workload, synthetic_qkv
    return synthetic_qkv(B, Hq, Hkv, L, D, workload=Workload(seed=seed), device="cuda", dtype=dtype)


@pytest.mark.parametrize("shape", [(2, 8, 2, 4099, 128, 128), (1, 32, 8, 16384, 128, 128), (1, 4, 4, 3001, 64, 37)],
                         ids=["gqa-b2-odd", "llama-16k", "mha-d64-w37"])
def test_scoring_bf16(shape):
    from tsa_core.scoring import score_window_naive, score_window_triton
    B, Hq, Hkv, L, D, W = shape
    q, k, _ = _qkv(B, Hq, Hkv, L, D)
    ref = score_window_naive(q.double(), k.double(), W)
    got = score_window_triton(q, k, W)
    # plain PyTorch in the input dtype: bf16 logits, fp32 softmax
    G = Hq // Hkv
    lp = torch.einsum("bhgwd,bhld->bhgwl", q[:, :, L - W:].reshape(B, Hkv, G, W, D), k).float() * D ** -0.5
    mask = torch.arange(L, device="cuda")[None, :] > torch.arange(L - W, L, device="cuda")[:, None]
    lowp = torch.softmax(lp.masked_fill(mask, float("-inf")), -1)[..., : L - W].mean(3).reshape(B, Hq, L - W)
    assert rms_ratio(got, ref) <= max(2 * rms_ratio(lowp, ref), 1e-5)


def test_selection_matches_naive_on_gpu():
    from tsa_core.selection import pool_scores_naive, pool_scores_triton, select_topk_naive, select_topk_triton
    g = torch.Generator(device="cuda").manual_seed(0)
    s = torch.rand(2, 32, 130000, device="cuda", generator=g) ** 4
    p_ref, l_ref = pool_scores_naive(s, 7)
    p, l = pool_scores_triton(s, 7)
    torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-8)
    keep = torch.tensor([87000, 5000], device="cuda")
    assert torch.equal(select_topk_triton(p_ref, keep, 130128), select_topk_naive(p_ref, keep, 130128))


def test_gather_scatter_bf16_exact():
    from tsa_core.gather import (compress_qkv_naive, compress_qkv_triton, decompress_output_naive,
                                 decompress_output_triton)
    from tsa_core.selection import select_topk_naive
    q, k, v = _qkv(2, 8, 2, 5000, 128)
    g = torch.Generator(device="cuda").manual_seed(1)
    order = select_topk_naive(torch.rand(2, 8, 4872, device="cuda", generator=g), torch.tensor([3000, 4000], device="cuda"), 5000)
    a = compress_qkv_triton(q, k, v, order, 4128)
    b = compress_qkv_naive(q, k, v, order, 4128)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    n_kept = torch.tensor([3128, 4128], device="cuda")
    assert torch.equal(decompress_output_triton(a[0], order, n_kept, 5000), decompress_output_naive(a[0], order, n_kept, 5000))


@pytest.mark.parametrize("backend", ["sdpa", "sdpa-flash", "sdpa-cudnn", "flex"])
def test_pipeline_against_reference_on_kept_set(backend):
    from tsa_bench.bench.latency import _run_stages, check
    from tsa_core import TSAConfig, get_backend
    from tsa_core.pipeline import TRITON_OPS
    q, k, v = _qkv(1, 32, 8, 8192, 128)
    cfg = TSAConfig(tau=0.005)
    st = _run_stages(TRITON_OPS, q, k, v, cfg, get_backend(backend), 128 ** -0.5)
    res = check(q, k, v, st, cfg, 128 ** -0.5, [0, 5, 31])
    assert res["passed"] == 1.0, res


def test_batch_elements_are_independent_on_gpu():
    from tsa_core import TSAConfig, tsa_attention
    q1, k1, v1 = _qkv(1, 8, 2, 6000, 128, seed=1)
    q2, k2, v2 = _qkv(1, 8, 2, 6000, 128, seed=2)
    cfg = TSAConfig(tau=0.01)
    out, st = tsa_attention(torch.cat([q1, q2]), torch.cat([k1, k2]), torch.cat([v1, v2]), cfg, "sdpa-flash")
    for b, (q, k, v) in enumerate([(q1, k1, v1), (q2, k2, v2)]):
        alone, s = tsa_attention(q, k, v, cfg, "sdpa-flash")
        assert s.budget[0] == st.budget[b]
        assert ((out[b] == 0) == (alone[0] == 0)).all()
        assert rms_ratio(out[b].float(), alone[0].float()) < 1e-2


def test_one_host_sync_per_sparse_layer():
    from tsa_core import TSAConfig, tsa_attention
    q, k, v = _qkv(2, 8, 2, 8192, 128)
    cfg = TSAConfig(tau=0.005)
    tsa_attention(q, k, v, cfg, "sdpa-flash")             # compile everything first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tsa_attention(q, k, v, cfg, "sdpa-flash")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, [str(w.message) for w in syncs]


def test_graph_selection_equals_eager(monkeypatch):
    from tsa_core import TSAConfig, tsa_attention
    q, k, v = _qkv(2, 8, 2, 7000, 128, seed=4)
    for cfg in (TSAConfig(tau=0.01), TSAConfig(keep_ratio=0.6)):
        monkeypatch.setenv("TSA_CUDA_GRAPHS", "0")
        eager, s1 = tsa_attention(q, k, v, cfg, "sdpa-flash")
        monkeypatch.setenv("TSA_CUDA_GRAPHS", "1")
        graph, s2 = tsa_attention(q, k, v, cfg, "sdpa-flash")
        again, s3 = tsa_attention(q, k, v, cfg, "sdpa-flash")       # a replay of the cached graph
        assert s1.budget == s2.budget == s3.budget
        assert torch.equal(eager, graph) and torch.equal(graph, again)


def test_graph_cache_survives_inference_mode_switches():
    from tsa_bench.bench.latency import _select_stage
    from tsa_core import TSAConfig, tsa_attention
    from tsa_core.pipeline import TRITON_OPS
    q, k, v = _qkv(1, 8, 2, 5000, 128, seed=5)
    cfg = TSAConfig(tau=0.01)
    with torch.inference_mode():
        a, _ = tsa_attention(q, k, v, cfg, "sdpa-flash")      # the graph is built in inference mode
    scores = TRITON_OPS.score(q, k, cfg.window, 128 ** -0.5)
    _select_stage(TRITON_OPS, scores, cfg, 5000)              # copies into its buffer outside it
    b, _ = tsa_attention(q, k, v, cfg, "sdpa-flash")
    assert torch.equal(a, b)
