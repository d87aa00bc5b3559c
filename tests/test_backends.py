import pytest
import torch

from conftest import rms_ratio
from tsa_core.backends import AttentionBackend, available_backends, get_backend, list_backends, register_backend


def test_cpu_backends_listed_without_cuda_queries(monkeypatch):
    def no_query(*args, **kwargs):
        raise AssertionError("CUDA queried while listing CPU backends")
    for name in ("is_available", "device_count", "current_device", "get_device_properties", "init"):
        monkeypatch.setattr(torch.cuda, name, no_query)
    names = available_backends("cpu", kind="dense")
    assert {"math", "sdpa"} <= set(names)
    assert "sdpa-cudnn" not in names


def test_registry_holds_the_gpu_backends():
    assert {"sdpa-flash", "sdpa-cudnn", "flex", "flash-attn"} <= set(list_backends("dense"))


@pytest.mark.parametrize("shape", [(2, 4, 2, 37, 16), (1, 3, 3, 20, 8)], ids=["gqa-b2", "mha"])
def test_sdpa_matches_math(shape, gen):
    B, Hq, Hkv, L, D = shape
    q = torch.randn(B, Hq, L, D, generator=gen)
    k = torch.randn(B, Hkv, L, D, generator=gen)
    v = torch.randn(B, Hkv, L, D, generator=gen)
    a = get_backend("math")(q, k, v, scale=0.25)
    b = get_backend("sdpa")(q, k, v, scale=0.25)
    assert a.shape == (B, Hq, L, D)
    assert rms_ratio(b, a) < 1e-5


def test_math_is_causal(gen):
    q = torch.randn(1, 1, 6, 4, generator=gen)
    k = torch.randn(1, 1, 6, 4, generator=gen)
    v = torch.randn(1, 1, 6, 4, generator=gen)
    out = get_backend("math")(q, k, v, scale=1.0)
    v2 = v.clone()
    v2[..., 3:, :] += 100.0                 # future values must not change earlier outputs
    out2 = get_backend("math")(q, k, v2, scale=1.0)
    assert torch.equal(out[..., :3, :], out2[..., :3, :])


def test_register_rejects_duplicates_and_bad_kinds():
    with pytest.raises(ValueError, match="already registered"):
        register_backend(AttentionBackend("math", "tsa_core.backends.dense:math_attention"))
    with pytest.raises(ValueError, match="kind"):
        register_backend(AttentionBackend("x-new", "a:b", kind="weird"))


def test_missing_package_is_reported():
    """A backend whose required package is absent says which package; the flash-attn entry
    declares its package (whether or not it is installed here)."""
    assert get_backend("flash-attn").requires == ("flash_attn",)
    be = AttentionBackend("x-needs-pkg", "a:b", devices=("cpu",), requires=("tsa_no_such_package_xyz",))
    reason = be.unavailable_reason("cpu")
    assert reason is not None and "'tsa_no_such_package_xyz'" in reason and "not installed" in reason
    assert AttentionBackend("x-has-pkg", "a:b", devices=("cpu",), requires=("torch",)).unavailable_reason("cpu") is None
