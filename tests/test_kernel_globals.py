"""The interpreter lets a kernel read any module global; the compiler accepts only constexpr
ones (and modules/functions). Catch the difference on CPU, before a GPU run does. Also: the
kernels are interpreted or compiled as the run's TRITON_INTERPRET decision says."""
import importlib
import pkgutil
import types

import pytest
import triton.language as tl

import tsa_core
from conftest import triton_interpret_setting
from tsa_core._checks import interpreter_on


def _kernels():
    for info in pkgutil.walk_packages(tsa_core.__path__, "tsa_core."):
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            fn = getattr(obj, "fn", None)
            if isinstance(fn, types.FunctionType) and fn.__module__ == mod.__name__ \
                    and type(obj).__name__ in ("JITFunction", "InterpretedFunction"):
                yield mod, name, fn


KERNELS = list(_kernels())


def test_kernels_found():
    assert len(KERNELS) >= 10


def _no_cuda_query():
    raise AssertionError("CUDA was queried although TRITON_INTERPRET is set")


@pytest.mark.parametrize("environ, cuda, want", [
    ({}, lambda: False, "1"),
    ({}, lambda: True, "0"),
    ({"TRITON_INTERPRET": "1"}, lambda: True, "1"),
    ({"TRITON_INTERPRET": "0"}, _no_cuda_query, "0"),
], ids=["no-cuda", "cuda", "explicit-1-wins", "explicit-0-no-query"])
def test_interpreter_only_without_cuda_unless_set(environ, cuda, want):
    assert triton_interpret_setting(environ, cuda) == want


def test_kernels_were_built_in_this_runs_mode():
    """conftest decided TRITON_INTERPRET before any kernel module was imported: every kernel
    is interpreted when it is on and compiled when it is off, none of the other kind."""
    want = "InterpretedFunction" if interpreter_on() else "JITFunction"
    kinds = {type(getattr(mod, name)).__name__ for mod, name, _ in KERNELS}
    assert kinds == {want}


@pytest.mark.parametrize("mod, name, fn", KERNELS, ids=[f"{m.__name__}.{n}" for m, n, _ in KERNELS])
def test_kernel_globals_are_constexpr(mod, name, fn):
    bad = []
    for g in fn.__code__.co_names:
        if g not in mod.__dict__:
            continue
        val = mod.__dict__[g]
        if isinstance(val, (types.ModuleType, tl.constexpr, types.FunctionType, type)) or callable(val):
            continue
        bad.append(f"{g}={val!r}")
    assert not bad, f"{name} reads non-constexpr globals {bad}: wrap them in tl.constexpr"
