"""The interpreter lets a kernel read any module global; the compiler accepts only constexpr
ones (and modules/functions). Catch the difference on CPU, before a GPU run does."""
import importlib
import pkgutil
import types

import pytest
import triton
import triton.language as tl

import tsa_core


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
