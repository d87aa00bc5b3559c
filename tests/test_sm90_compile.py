"""Compile every GPU kernel for Hopper (sm_90) on the CPU, without a GPU.

The interpreter runs Python semantics and hides what only the compiler rejects (non-constexpr
globals, unsupported ops, bad tuple returns from helpers). This compiles through Triton's own
pipeline to a cubin with the ptxas bundled in the wheel, in one subprocess with the
interpreter off (each kernel reports on its own line), so a kernel that would not build on
the lent GPU fails here first. ``test_every_kernel_has_a_case`` keeps the list complete.
"""
import importlib
import json
import pkgutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import tsa_core

ROOT = Path(__file__).resolve().parent.parent

BF = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "o_ptr": "*bf16",
      "qc_ptr": "*bf16", "kc_ptr": "*bf16", "vc_ptr": "*bf16", "oc_ptr": "*bf16"}
WIN = dict(GROUP=4, BLOCK_W=128, BLOCK_D=128, UPCAST=False)
BSA_PTRS = dict(BF, idx_ptr="*i32", cnt_ptr="*i32", cols_ptr="*i32", col_cnt_ptr="*i32", bmask_ptr="*u8")
BSA = dict(GROUP=4, BLOCK_SIZE=128, BLOCK_D=128, EVEN_D=True, HAS_COLS=False, UPCAST=False, BLOCK_M=128,
           BLOCK_N=64)

# case -> (module, kernel, constexprs, pointer types (default *fp32), extra i64 scalars)
CASES = {
    "stats": ("tsa_core.scoring.kernel", "_stats_kernel", dict(WIN, BLOCK_K=128), BF, ()),
    "probs": ("tsa_core.scoring.kernel", "_probs_kernel", dict(WIN, BLOCK_K=64), BF, ()),
    "combine": ("tsa_core.scoring.kernel", "_combine_kernel", dict(BLOCK_W=128), {}, ()),
    "profile": ("tsa_core.sparse.flexprefill.kernel", "_profile_kernel", dict(WIN, BLOCK_K=64), BF, ()),
    "profile_parts": ("tsa_core.sparse.flexprefill.kernel", "_profile_parts_kernel",
                      dict(WIN, BLOCK_K=64, NPART=3), BF, ()),
    "xattn_block": ("tsa_core.sparse.xattention.kernel", "_xattn_block_kernel",
                    dict(GROUP=4, S=16, GPB=8, BLOCK_G=64, BLOCK_D=128, UPCAST=False), BF, ()),
    "block_sparse": ("tsa_core.sparse.block_sparse.kernel", "_bsa_fwd_kernel", BSA, BSA_PTRS, ()),
    # MInference: the column loop, with the masked head-dim loads (D = 96 in a 128 tile)
    "block_sparse_cols": ("tsa_core.sparse.block_sparse.kernel", "_bsa_fwd_kernel",
                          dict(BSA, HAS_COLS=True, EVEN_D=False), BSA_PTRS, ()),
    "compact": ("tsa_core.sparse.pattern_kernel", "_compact_kernel", dict(CHUNK=1024),
                dict(mask_ptr="*u8", idx_ptr="*i32", cnt_ptr="*i32"), ()),
    "pool": ("tsa_core.selection.kernel", "_pool_kernel", dict(KERNEL=7, BLOCK=1024), {}, ()),
    "radix_hist": ("tsa_core.selection.kernel", "_radix_hist_kernel", dict(BLOCK=2048, RADIX=2048),
                   dict(prefix_ptr="*i64", hist_ptr="*i32"), ("hi_mask",)),
    "radix_pick_first": ("tsa_core.selection.kernel", "_radix_pick_kernel", dict(RADIX=2048, FIRST=True),
                         dict(hist_ptr="*i32", prefix_ptr="*i64", need_ptr="*i32", keep_ptr="*i64"), ()),
    "radix_pick_next": ("tsa_core.selection.kernel", "_radix_pick_kernel", dict(RADIX=1024, FIRST=False),
                        dict(hist_ptr="*i32", prefix_ptr="*i64", need_ptr="*i32", keep_ptr="*i64"), ()),
    "compact_count": ("tsa_core.selection.kernel", "_compact_count_kernel", dict(BLOCK=2048),
                      dict(thr_ptr="*i64", cnt_gt_ptr="*i32", cnt_eq_ptr="*i32"), ()),
    "compact_write": ("tsa_core.selection.kernel", "_compact_write_kernel", dict(BLOCK=2048, BLOCK_C=64),
                      dict(thr_ptr="*i64", need_ptr="*i32", keep_ptr="*i64", cnt_gt_ptr="*i32",
                           cnt_eq_ptr="*i32", order_ptr="*i32"), ()),
    "compress": ("tsa_core.gather.kernel", "_compress_kernel", dict(GROUP=4, BLOCK_N=64, BLOCK_D=128),
                 dict(BF, order_ptr="*i32"), ()),
    "decompress": ("tsa_core.gather.kernel", "_decompress_kernel", dict(BLOCK_N=64, BLOCK_D=128),
                   dict(BF, order_ptr="*i32", n_kept_ptr="*i64", out_ptr="*bf16"), ()),
}

SCRIPT = textwrap.dedent('''
    import importlib, json, os, sys
    os.environ["TRITON_INTERPRET"] = "0"
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def sig(fn, consts, ptrs, i64):
        out = {}
        for name in fn.arg_names:
            if name in consts:
                out[name] = "constexpr"
            elif name.endswith("_ptr"):
                out[name] = ptrs.get(name, "*fp32")
            elif name.startswith("stride") or name in i64:
                out[name] = "i64"
            elif "scale" in name or name.startswith("inv_"):
                out[name] = "fp32"
            else:
                out[name] = "i32"
        return out

    for name, (module, attr, consts, ptrs, i64) in json.loads(sys.argv[1]).items():
        try:
            fn = getattr(importlib.import_module(module), attr)
            src = ASTSource(fn=fn, signature=sig(fn, consts, ptrs, i64), constexprs=consts)
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
            assert "cubin" in k.asm, sorted(k.asm)
            print("ok", name, flush=True)
        except Exception as e:  # noqa: BLE001 - report every kernel, not just the first failure
            print("FAIL", name, type(e).__name__, str(e).replace(chr(10), " ")[:2000], flush=True)
''')


def _ptxas_available() -> bool:
    import triton
    return any(Path(triton.__file__).parent.rglob("ptxas*"))


@pytest.fixture(scope="module")
def compiled():
    """``{case: "ok" or the failure}``: all cases compiled in one subprocess."""
    res = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CASES)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    lines = {}
    for line in res.stdout.splitlines():
        status, _, rest = line.partition(" ")
        name, _, why = rest.partition(" ")
        lines[name] = "ok" if status == "ok" else why
    return lines, res.stderr[-3000:]


@pytest.mark.skipif(not _ptxas_available(), reason="this Triton build ships no ptxas")
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_compiles_for_sm90(compiled, name):
    lines, stderr = compiled
    assert lines.get(name) == "ok", lines.get(name) or stderr


def _jit_functions():
    for info in pkgutil.walk_packages(tsa_core.__path__, "tsa_core."):
        mod = importlib.import_module(info.name)
        for attr, obj in vars(mod).items():
            fn = getattr(obj, "fn", None)
            if isinstance(fn, types.FunctionType) and fn.__module__ == mod.__name__ \
                    and type(obj).__name__ in ("JITFunction", "InterpretedFunction"):
                yield mod.__name__, attr, fn


def test_every_kernel_has_a_case():
    """Every launched kernel (a jit function no other jit function calls) is compiled above;
    helpers are compiled through their callers."""
    found = list(_jit_functions())
    called = {n for _, _, fn in found for n in fn.__code__.co_names}
    launched = {(mod, attr) for mod, attr, _ in found if attr not in called}
    missing = launched - {(mod, attr) for mod, attr, *_ in CASES.values()}
    assert len(launched) >= 10 and not missing, sorted(missing)
