"""Gemma-3's sliding layers by query chunks (``--sliding-attention banded``) against the L x L
mask path on a real checkpoint: the logits of one prompt through both, dense and TSA.

    PYTHONPATH=. python scripts/check_banded_sliding.py --model gemma-3-270m-q4_k_m.gguf --seq-len 2600

Writes a tidy CSV (``--out-dir``, default results/gemma/banded-check): per method the largest
absolute logit difference, the largest logit, the fraction of positions whose argmax agrees,
and each path's forward time on this device (a CPU time says nothing about a GPU's). The prompt
is random token ids (seeded): the check is numerical, not a task. Exit code 1 when an argmax
differs or the difference exceeds ``--atol``.

In bf16 the two paths round differently, and over 18 layers that moves logits by several bf16
steps (a step is 0.5 at a logit of 100) and flips near-tied argmaxes, so equality is the wrong
test there. ``--reference fp32`` also runs the mask path with fp32 weights and measures both
bf16 paths against it: banded passes when it is no further from fp32 than the mask path is
(argmax agreement with fp32 at most ``--agree-slack`` lower, largest difference at most twice
the mask path's plus ``--atol``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a hybrid model (Gemma 3): preset, GGUF file or directory")
    ap.add_argument("--seq-len", type=int, default=2600, help="prompt tokens (longer than one 1024-query chunk)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--tau", type=float, default=0.01, help="TSA tau of the TSA run (default 0.01)")
    ap.add_argument("--sparse-layers", default="17", help="TSA layers of the TSA run (default 17)")
    ap.add_argument("--atol", type=float, default=1e-2, help="largest allowed logit difference (default 1e-2)")
    ap.add_argument("--keep-logits", type=int, default=1024,
                    help="compare the logits of the last N positions only (default 1024; at 32K all of them "
                         "would take 34 GB in fp32)")
    ap.add_argument("--reference", choices=["fp32"], default=None,
                    help="also run the mask path in fp32 and compare both paths to it (for --dtype bf16)")
    ap.add_argument("--agree-slack", type=float, default=0.01,
                    help="with --reference: how much lower banded's argmax agreement with fp32 may be than "
                         "the mask path's (default 0.01)")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)

    from tsa_bench.hf import configure_tsa, last_stats, load_model
    from tsa_bench.hf.attention import sliding_chunk
    from tsa_bench.paths import RESULTS_DIR
    from tsa_bench.results import ResultWriter, row
    from tsa_core import TSAConfig

    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    if args.reference and args.dtype == args.reference:
        print(f"--reference {args.reference} compares against the same dtype as --dtype: use --dtype bf16",
              file=sys.stderr)
        return 2
    model, _ = load_model(args.model, weights="pretrained", dtype=dtype, device=args.device, tokenizer=False)
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    if not window or args.seq_len <= sliding_chunk(window):
        print(f"needs a sliding-window model and --seq-len > {sliding_chunk(window or 0)} (one chunk)", file=sys.stderr)
        return 2
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(10, vocab, (1, args.seq_len), generator=torch.Generator().manual_seed(1)).to(args.device)
    writer = ResultWriter("banded_check", vars(args), device=args.device,
                          out_dir=args.out_dir or RESULTS_DIR / "gemma" / "banded-check")
    runs = (("dense", None, None), ("tsa", TSAConfig(tau=args.tau), args.sparse_layers))
    reference = {}
    if args.reference:            # the mask path in fp32, each method, before the bf16 model runs
        ref_model, _ = load_model(args.model, weights="pretrained", dtype=torch.float32, device=args.device,
                                  tokenizer=False)
        for method, cfg, layers in runs:
            configure_tsa(ref_model, method=method, tsa_config=cfg, sparse_layers=layers, sliding="mask")
            with torch.no_grad():
                reference[method] = ref_model(ids, use_cache=False, logits_to_keep=args.keep_logits).logits[0].float()
        del ref_model
    ok = True
    for method, cfg, layers in runs:
        logits, secs = {}, {}
        for sliding in ("mask", "banded"):
            configure_tsa(model, method=method, tsa_config=cfg, sparse_layers=layers, sliding=sliding)
            with torch.no_grad():
                model(ids[:, :64], use_cache=False)                       # warm-up
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                logits[sliding] = model(ids, use_cache=False, logits_to_keep=args.keep_logits).logits[0].float()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                secs[sliding] = time.perf_counter() - t
            reasons = {s.reason for i, s in last_stats(model).items() if "sliding" in s.reason}
            assert reasons == {"sliding-window layer: dense SDPA with its mask"
                               + (", by query chunks" if sliding == "banded" else "")}, reasons
        a, b = logits["mask"], logits["banded"]
        diff, agree = float((a - b).abs().max()), float((a.argmax(-1) == b.argmax(-1)).float().mean())
        ident = dict(method=method, tau=args.tau if cfg else None, seq_len=args.seq_len, model=args.model,
                     dtype=args.dtype, stage="prefill", batch=1)
        if args.reference:
            r = reference[method]
            vs = {s: (float((x - r).abs().max()), float((x.argmax(-1) == r.argmax(-1)).float().mean()))
                  for s, x in (("mask", a), ("banded", b))}
            passed = vs["banded"][1] >= vs["mask"][1] - args.agree_slack and \
                vs["banded"][0] <= 2 * vs["mask"][0] + args.atol
            ok &= passed
            for s, (d, g) in vs.items():
                writer.add([row(f"max_abs_logit_diff_vs_{args.reference}_{s}", d, **ident),
                            row(f"argmax_agreement_vs_{args.reference}_{s}", g, n=int(r.shape[0]),
                                checked=passed if s == "banded" else None, **ident)])
            print(f"{method} against the {args.reference} mask path: mask max |diff| {vs['mask'][0]:.3g}, argmax "
                  f"agreement {vs['mask'][1]:.4f}; banded {vs['banded'][0]:.3g}, {vs['banded'][1]:.4f} -> "
                  f"{'as close' if passed else 'FURTHER'}")
        else:
            ok &= diff <= args.atol and agree == 1.0
        writer.add([row("max_abs_logit_diff", diff, checked=None if args.reference else diff <= args.atol, **ident),
                    row("max_abs_logit", float(a.abs().max()), **ident),
                    row("argmax_agreement", agree, n=int(a.shape[0]), **ident),
                    row("forward_s_mask", round(secs["mask"], 3), **ident),
                    row("forward_s_banded", round(secs["banded"], 3), **ident)])
        print(f"{method}: max |logit diff| {diff:.3g} (max |logit| {float(a.abs().max()):.1f}), argmax agreement "
              f"{agree:.4f}; forward {secs['mask']:.2f} s (mask) vs {secs['banded']:.2f} s (banded) on {args.device}")
    print(writer.write())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
