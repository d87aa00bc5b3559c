import pytest
import torch

from conftest import rms_ratio
from tsa_core.scoring import score_window_naive, score_window_triton
from tsa_core.scoring.kernel import _n_chunks, window_softmax_stats

SHAPES = [  # B, Hq, Hkv, L, D, W
    (1, 2, 2, 64, 16, 16),
    (2, 4, 2, 157, 24, 37),     # GQA, odd length, D not a power of two
    (1, 6, 3, 211, 32, 100),
    (2, 4, 1, 96, 16, 1),       # MQA, window of one query
]
IDS = ["mha", "gqa-odd-batch2", "gqa-wide-window", "mqa-w1"]


def _qkv(gen, B, Hq, Hkv, L, D, dtype=torch.float32):
    q = torch.randn(B, Hq, L, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, L, D, generator=gen).to(dtype)
    return q, k


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_triton_matches_naive(shape, gen, poison):
    B, Hq, Hkv, L, D, W = shape
    q, k = _qkv(gen, B, Hq, Hkv, L, D)
    ref = score_window_naive(q, k, W)
    out = score_window_triton(q, k, W)
    assert out.shape == (B, Hq, L - W) and out.dtype == torch.float32
    assert rms_ratio(out, ref) < 1e-5


def test_triton_matches_naive_over_several_key_chunks(gen, poison):
    """L = 1000 with two rows: both passes split the keys into several 256-key chunks (the
    combine kernel merges partial softmax stats; chunk borders fall inside the prefix).
    Shorter inputs run one chunk and never reach that path."""
    B, Hq, Hkv, L, D, W = 1, 2, 1, 1000, 16, 37
    assert _n_chunks(torch.device("cpu"), B * Hq, L) > 1 and _n_chunks(torch.device("cpu"), B * Hq, L - W) > 1
    q, k = _qkv(gen, B, Hq, Hkv, L, D)
    out = score_window_triton(q, k, W)
    ref = score_window_naive(q, k, W)
    assert rms_ratio(out, ref) < 1e-5
    m, inv_l = window_softmax_stats(q, k, W)
    logits = torch.einsum("bhwd,bhld->bhwl", q[:, :, L - W:], k.expand(B, Hq, L, D)) * D ** -0.5
    logits = logits.masked_fill(torch.arange(L).view(1, L) > torch.arange(L - W, L).view(W, 1), float("-inf"))
    log2e = 1.4426950408889634
    torch.testing.assert_close(m, logits.amax(-1) * log2e, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(inv_l, 1.0 / torch.exp2(logits * log2e - m.unsqueeze(-1)).sum(-1), rtol=1e-4, atol=0)


def test_triton_fp16_matches_naive(gen):
    q, k = _qkv(gen, 2, 4, 2, 130, 32, torch.float16)
    assert rms_ratio(score_window_triton(q, k, 17), score_window_naive(q, k, 17)) < 1e-3


def test_naive_is_mean_of_causal_softmax(gen):
    B, Hq, Hkv, L, D, W = 1, 4, 2, 40, 8, 6
    q, k = _qkv(gen, B, Hq, Hkv, L, D)
    got = score_window_naive(q, k, W, scale=0.3)
    for h in range(Hq):
        acc = torch.zeros(L - W, dtype=torch.float64)
        for i in range(L - W, L):
            logits = (k[0, h // 2, : i + 1].double() @ q[0, h, i].double()) * 0.3
            acc += torch.softmax(logits, 0)[: L - W]
        torch.testing.assert_close(got[0, h].double(), acc / W, rtol=1e-5, atol=1e-7)


def test_non_contiguous_inputs(gen):
    q, k = _qkv(gen, 2, 4, 2, 77, 16)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)       # [B, H, L, D] view of [B, L, H, D]
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)
    assert not qt.is_contiguous()
    assert rms_ratio(score_window_triton(qt, kt, 9), score_window_naive(q, k, 9)) < 1e-5


@pytest.mark.parametrize("fn", [score_window_naive, score_window_triton], ids=["naive", "triton"])
def test_bad_window(fn, gen):
    q, k = _qkv(gen, 1, 2, 1, 32, 8)
    with pytest.raises(ValueError, match="window"):
        fn(q, k, 32)
    with pytest.raises(ValueError, match="window"):
        fn(q, k, 0)


def test_triton_on_cpu_without_interpreter_is_refused(gen, monkeypatch):
    q, k = _qkv(gen, 1, 2, 1, 32, 8)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        score_window_triton(q, k, 4)


# --- the autotuner's configs and the GPU's shared memory (found on an H200: TSA in fp32 on
# Gemma-3, D = 256, window 128, failed with "out of resource: shared memory, Required: 262144,
# Hardware limit: 232448" because every standard tile needs more than the limit) ---

H200_SHARED = 232448


def test_shared_bytes_is_what_triton_asked_for_on_the_h200():
    from tsa_core.scoring.kernel import shared_bytes
    assert shared_bytes(128, 256, 64, 2, 4) == 262144


def _pruned(monkeypatch, dtype, block_w, block_d, limit=H200_SHARED):
    import tsa_core.scoring.kernel as kmod
    monkeypatch.setattr(kmod, "shared_memory_per_block", lambda device: limit)
    q = torch.zeros(1, dtype=dtype)
    configs = kmod._configs()
    return configs, kmod._prune(configs, {"q_ptr": q}, BLOCK_W=block_w, BLOCK_D=block_d, GROUP=1, UPCAST=False)


@pytest.mark.parametrize("dtype,block_d", [(torch.bfloat16, 256), (torch.float32, 128), (torch.bfloat16, 64)])
def test_prune_keeps_the_standard_tiles_when_one_fits(monkeypatch, dtype, block_d):
    configs, kept = _pruned(monkeypatch, dtype, 128, block_d)
    assert kept == configs


def test_prune_falls_back_to_narrow_tiles_that_fit(monkeypatch):
    from tsa_core.scoring.kernel import shared_bytes
    configs, kept = _pruned(monkeypatch, torch.float32, 128, 256)
    assert kept and all(c not in configs for c in kept)
    assert all(shared_bytes(128, 256, c.kwargs["BLOCK_K"], c.num_stages, 4) <= H200_SHARED for c in kept)
    assert all(256 % c.kwargs["BLOCK_K"] == 0 for c in kept)       # whole tiles per 256-key chunk


def test_prune_keeps_the_narrowest_tile_when_nothing_fits(monkeypatch):
    _, kept = _pruned(monkeypatch, torch.float32, 128, 256, limit=1000)
    assert len(kept) == 1 and kept[0].kwargs["BLOCK_K"] == 16 and kept[0].num_stages == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_naive_at_gemma3_head_width_on_gpu(dtype):
    """Gemma-3's 256-wide heads with the default 128-query window, in fp32 and bf16."""
    gen = torch.Generator().manual_seed(3)
    q, k = _qkv(gen, 1, 4, 1, 1000, 256, dtype)
    q, k = q.cuda(), k.cuda()
    ref = score_window_naive(q.float(), k.float(), 128)
    out = score_window_triton(q, k, 128)
    assert rms_ratio(out, ref) < (1e-4 if dtype == torch.float32 else 2e-2)
