import pytest
import torch

from conftest import rms_ratio
from tsa_core import TSAConfig, get_backend, tsa_attention
from tsa_core.pipeline import NAIVE_OPS
from tsa_core.selection import layer_budget
from tsa_bench.workload import Workload, synthetic_qkv

CFG = TSAConfig(tau=0.05, window=8, min_keep=16, pool_kernel=3)


def _qkv(B=2, Hq=4, Hkv=2, L=123, D=16, seed=0, dtype=torch.float32):
    return synthetic_qkv(B, Hq, Hkv, L, D, workload=Workload(tail=2.0, seed=seed), dtype=dtype)


def _reference(q, k, v, cfg):
    """Masked dense attention on the kept set found by the naive ops (independent of the pipeline)."""
    B, Hq, L, D = q.shape
    G = Hq // k.shape[1]
    scores = NAIVE_OPS.score(q, k, cfg.window, D ** -0.5)
    pooled, layer = NAIVE_OPS.pool(scores, cfg.pool_kernel)
    keep, _ = layer_budget(layer, cfg)
    order = NAIVE_OPS.select(pooled, keep, L)
    out = torch.zeros(B, L, Hq, D, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            kept = torch.zeros(L, dtype=torch.bool)
            kept[order[b, h, : int(keep[b]) + cfg.window].long()] = True
            logits = (q[b, h].double() @ k[b, h // G].double().T) * D ** -0.5
            allowed = kept[None, :] & torch.ones(L, L, dtype=torch.bool).tril()
            probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
            out[b, kept, h] = (probs @ v[b, h // G].double())[kept]
    return out, keep


@pytest.mark.parametrize("impl", ["naive", "triton"])
def test_output_equals_masked_dense_on_kept_set(impl):
    q, k, v = _qkv()
    out, stats = tsa_attention(q, k, v, CFG, "math", impl=impl)
    ref, keep = _reference(q, k, v, CFG)
    assert not stats.dense
    assert stats.budget == tuple(keep.tolist())
    assert rms_ratio(out, ref) < 1e-5
    assert ((out == 0) == (ref == 0)).all()          # same rows dropped, exact zeros


def test_triton_and_naive_agree():
    q, k, v = _qkv(L=150, seed=3)
    a, sa = tsa_attention(q, k, v, CFG, "sdpa", impl="naive")
    b, sb = tsa_attention(q, k, v, CFG, "sdpa", impl="triton")
    assert (sa.budget, sa.kept, sa.dense) == (sb.budget, sb.kept, sb.dense)
    assert sa.pruned_mass == pytest.approx(sb.pruned_mass, rel=1e-5)
    assert rms_ratio(b, a) < 1e-5


def test_tau_zero_is_exactly_dense():
    q, k, v = _qkv()
    out, stats = tsa_attention(q, k, v, TSAConfig(tau=0.0), "sdpa")
    assert stats.dense and stats.reason == "tau = 0"
    assert torch.equal(out, get_backend("sdpa")(q, k, v, scale=16 ** -0.5).transpose(1, 2))


def test_short_sequence_runs_dense_and_says_why():
    q, k, v = _qkv(L=24)
    out, stats = tsa_attention(q, k, v, CFG, "math")
    assert stats.dense and "min_keep" in stats.reason
    assert stats.kept == (24, 24) and stats.sparsity == (0.0, 0.0)
    assert torch.equal(out, get_backend("math")(q, k, v, scale=16 ** -0.5).transpose(1, 2))


def test_nothing_to_prune_falls_back_to_dense():
    q, k, v = _qkv()
    out, stats = tsa_attention(q, k, v, TSAConfig(keep_ratio=1.0, window=8, min_keep=16), "math")
    assert stats.dense and "nothing to prune" in stats.reason
    assert torch.equal(out, get_backend("math")(q, k, v, scale=16 ** -0.5).transpose(1, 2))


def test_each_batch_element_gets_what_it_would_get_alone():
    q1, k1, v1 = _qkv(B=1, seed=1, L=140)
    q2, k2, v2 = synthetic_qkv(1, 4, 2, 140, 16, workload=Workload(tail=0.5, seed=2))
    q, k, v = torch.cat([q1, q2]), torch.cat([k1, k2]), torch.cat([v1, v2])
    out, stats = tsa_attention(q, k, v, CFG, "math", impl="triton")
    assert stats.budget[0] != stats.budget[1]          # different budgets in one batch
    for b, (qb, kb, vb) in enumerate([(q1, k1, v1), (q2, k2, v2)]):
        alone, s = tsa_attention(qb, kb, vb, CFG, "math", impl="triton")
        assert s.budget[0] == stats.budget[b]
        assert rms_ratio(out[b], alone[0]) < 1e-6
        assert ((out[b] == 0) == (alone[0] == 0)).all()


def test_keep_ratio_forces_the_budget():
    q, k, v = _qkv(L=200)
    _, stats = tsa_attention(q, k, v, TSAConfig(keep_ratio=0.5, window=8, min_keep=16), "math")
    assert stats.budget == (96, 96) and stats.kept == (104, 104)
    assert stats.kept_per_head == ((104,) * 4, (104,) * 4)
    n, L = 104, 200
    assert stats.sparsity[0] == pytest.approx(1 - n * (n + 1) / (L * (L + 1)))


def test_non_contiguous_inputs():
    q, k, v = _qkv()
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    a, _ = tsa_attention(*views, CFG, "math", impl="triton")
    b, _ = tsa_attention(q, k, v, CFG, "math", impl="naive")
    assert rms_ratio(a, b) < 1e-5


@pytest.mark.parametrize("mutate, match", [
    (lambda q, k, v: (q[:, :3], k, v), "multiple of KV heads"),
    (lambda q, k, v: (q, k.half(), v.half()), "dtype"),
    (lambda q, k, v: (q, k[:, :, :-1], v[:, :, :-1]), "length"),
    (lambda q, k, v: (q, k, v[..., :8]), "same shape"),
    (lambda q, k, v: (q[..., :8], k, v), "head dim"),
    (lambda q, k, v: (q[:1], k, v), "batch"),
    (lambda q, k, v: (q, k.to("meta"), v.to("meta")), "device"),
    (lambda q, k, v: (q[0], k, v), "4 dims"),
    (lambda q, k, v: (q.long(), k, v), "floating"),
], ids=["heads", "dtype", "length", "kv-shape", "head-dim", "batch", "device", "rank", "int"])
def test_bad_input_is_a_clear_value_error(mutate, match):
    q, k, v = _qkv(L=40)
    with pytest.raises(ValueError, match=match):
        tsa_attention(*mutate(q, k, v), CFG, "math")


def test_bad_backend_impl_and_config():
    q, k, v = _qkv(L=40)
    with pytest.raises(ValueError, match="unknown attention backend"):
        tsa_attention(q, k, v, CFG, "nope")
    with pytest.raises(ValueError, match="impl"):
        tsa_attention(q, k, v, CFG, "math", impl="cuda")
    with pytest.raises(ValueError, match="TSAConfig"):
        tsa_attention(q, k, v, {"tau": 0.1}, "math")
    with pytest.raises(ValueError, match="runs on cuda"):
        tsa_attention(q, k, v, CFG, "sdpa-cudnn")


def test_triton_impl_on_cpu_without_interpreter_is_refused(monkeypatch):
    q, k, v = _qkv(L=80)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        tsa_attention(q, k, v, CFG, "math", impl="triton")


def test_selection_graphs_switch_nests_and_restores(monkeypatch):
    from tsa_core.pipeline import cuda_graphs_enabled, selection_graphs
    monkeypatch.delenv("TSA_CUDA_GRAPHS", raising=False)
    assert cuda_graphs_enabled()
    with selection_graphs(False):
        assert not cuda_graphs_enabled()
        with selection_graphs(True):
            assert cuda_graphs_enabled()
        assert not cuda_graphs_enabled()
    assert cuda_graphs_enabled()
    monkeypatch.setenv("TSA_CUDA_GRAPHS", "0")
    assert not cuda_graphs_enabled()
    with selection_graphs(True):            # the explicit switch wins over the environment
        assert cuda_graphs_enabled()
