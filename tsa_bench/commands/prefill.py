"""``tsa-bench prefill``: end-to-end time to first token of a whole model, dense vs TSA (PAPER.md §3.9)."""
from __future__ import annotations

import json
import math
import statistics
import time
from typing import Dict, List, Optional

import torch

from tsa_bench.args import add_model_load_arguments, add_sliding_argument, fmt_length, parse_lengths
from tsa_bench.cli import UsageError
from tsa_bench.commands.profile_layers import resolve_device

NAME = "prefill"
HELP = "Time a whole-model prefill (TTFT: last-token logits) per method and length; report peak memory."
EPILOG = """examples:
  tsa-bench prefill --model llama-3.1-8b --weights random --seq-lens 8k,128k --keep-ratio 0.675 \\
      --dense-backend sdpa-flash --device cuda                       # the issue-4 speed target
  tsa-bench prefill --model meta-llama/Llama-3.1-8B-Instruct --seq-lens 8k,128k --tau 0.005 --device cuda
  tsa-bench prefill --model llama-3.1-8b --weights random --seq-lens 32k --methods auto --device cuda
  tsa-bench prefill --model tiny-llama --weights random --seq-lens 2k,4k --keep-ratio 0.675 \\
      --window 16 --min-keep 16 --runs 2                             # CPU smoke run
  tsa-bench prefill --model llama-3.1-8b --weights random --seq-lens 8k,128k --dry-run
  tsa-bench prefill --model smollm2-135m --seq-lens 1k --dtype fp32 --device cpu --runs 1 --min-keep 256 --window 64
  tsa-bench prefill --model gemma3-270m --seq-lens 32k --device cuda      # TSA in global layers 5, 11, 17

Each (length, method) is timed as one forward of model(input_ids, logits_to_keep=1) (KV cache
built, as when serving; --no-cache to skip it): warm-up runs, then --runs timed runs with CUDA
events; rows give mean +- std (population, as the paper), median with p20/p80, peak GPU memory
(weights included), kept fraction / attention-map sparsity of the sparse layers, and the
speedup against 'dense' at the same length. Methods: 'dense', 'tsa' (TSA over the dense
backend in the sparse layers), '<sparse backend>' and '<sparse backend>+tsa'; 'auto' = dense,
tsa and every sparse backend of the registry that runs on the device, with and without TSA.
Random weights give near-uniform attention, so time TSA with --keep-ratio. Before timing, a
correctness gate checks that 'tsa' with tau = 0 reproduces 'dense' bit for bit and that every
method's logits are finite; a failed gate exits 1 and no speedup is reported for it.
"""


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="preset name, .gguf file or directory, local path or Hugging Face id")
    p.add_argument("--seq-lens", default="8k,128k", help="prompt lengths, e.g. 8k,128k (default)")
    p.add_argument("--methods", default="dense,tsa",
                   help="comma list of dense, tsa, <sparse backend>, <sparse backend>+tsa, or auto (default dense,tsa)")
    p.add_argument("--dense-backend", default="sdpa",
                   help="registry dense kernel(s), comma list (default sdpa; sdpa-flash, sdpa-cudnn, ...); every "
                        "method is timed on each, with speedups against 'dense' on the same kernel")
    p.add_argument("--tau", type=float, default=None,
                   help="token coverage (default: the tau saved in the --sparse-layers profile, else the preset's, "
                        "else 0.005)")
    p.add_argument("--keep-ratio", type=float, default=None, help="force the kept fraction of prefix tokens instead of tau")
    p.add_argument("--window", type=int, default=128, help="TSA recent-query window W (default 128)")
    p.add_argument("--min-keep", type=int, default=1024, help="TSA minimum kept prefix tokens (default 1024)")
    p.add_argument("--pool-kernel", type=int, default=7, help="TSA score pooling width (default 7)")
    p.add_argument("--sparse-layers", default=None,
                   help="'15-30', 'half', 'preset' or a profile JSON (default: preset list, saved profile, or second half)")
    add_model_load_arguments(p)
    p.add_argument("--impl", default="auto", choices=["auto", "triton", "naive"], help="TSA ops implementation")
    add_sliding_argument(p)
    p.add_argument("--batch", type=int, default=1, help="equal-length prompts per forward (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per (length, method) (default 1)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per (length, method) (default 5)")
    p.add_argument("--no-cache", action="store_true", help="do not build the KV cache (use_cache=False)")
    p.add_argument("--no-check", action="store_true", help="skip the correctness gate")
    p.add_argument("--prompt-file", default=None, help="text file for the prompt (needs a tokenizer)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and random prompt ids")
    p.add_argument("--out-dir", default=None, help="directory of the CSV (default results/prefill)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="skip (and list) cells that would end past this many seconds after the model is built, "
                        "estimated from the slowest run seen at that length (default: no budget)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved setup and sweep, and exit")


def _methods(text: str, device: str) -> List[str]:
    from tsa_core.backends import available_backends

    items = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not items:
        raise ValueError("--methods is empty")
    out: List[str] = []
    for m in items:
        if m == "auto":
            out += ["dense", "tsa"]
            for name in available_backends(device, kind="sparse"):
                out += [name, f"{name}+tsa"]
        else:
            out.append(m)
    return list(dict.fromkeys(out))


def _check_counts(args) -> None:
    for name in ("batch", "runs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")


class _Timer:
    """CUDA events on a GPU (the paper's method), perf_counter on CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            result = fn()
            end.record()
            torch.cuda.synchronize()
            return result, start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - t0


def _quantile(xs: List[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _forward(model, ids, use_cache: bool) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=use_cache, logits_to_keep=1)
    logits = out.logits[:, -1].float()
    del out                                   # drop the KV cache before the next run
    return logits


def run(args) -> int:
    from tsa_core import TSAConfig
    from tsa_bench.hf import configure_tsa, last_stats, load_model, summarize_stats
    from tsa_bench.hf.attention import parse_method
    from tsa_bench.hf.layers import check_full_attention, full_attention_layers, resolve_tau
    from tsa_bench.hf.loading import model_config, num_decoder_layers, resolve_sparse_layers
    from tsa_bench.hf.presets import find_preset
    from tsa_bench.hf.prompts import prompt_ids
    from tsa_bench.results import ResultWriter, row

    _check_counts(args)
    lengths = parse_lengths(args.seq_lens)
    device = resolve_device(args.device)
    methods = _methods(args.methods, device)
    backends = list(dict.fromkeys(b.strip() for b in args.dense_backend.split(",") if b.strip()))
    if not backends:
        raise ValueError("--dense-backend is empty")
    for b in backends:
        for m in methods:
            parse_method(m, b)
    config, preset = model_config(args.model, args.weights, args.rope_scaling)
    text_cfg = config.get_text_config()
    n_layers = num_decoder_layers(config)
    try:                          # --tau > the --sparse-layers profile's tau > the preset's > 0.005
        tau, tau_source = resolve_tau(args.tau, args.sparse_layers, preset.tau if preset else None)
    except ValueError as exc:
        raise UsageError(f"--sparse-layers: {exc}") from None
    tsa_cfg = TSAConfig(tau=tau, window=args.window, pool_kernel=args.pool_kernel, min_keep=args.min_keep,
                        keep_ratio=args.keep_ratio)
    name = preset.name if preset else args.model
    layers, source = resolve_sparse_layers(args.sparse_layers, n_layers, tsa_config=tsa_cfg,
                                           preset=find_preset(name), model_name=name, weights=args.weights,
                                           attention_layers=full_attention_layers(config))
    check_full_attention(layers, config)
    max_pos = getattr(text_cfg, "max_position_embeddings", None)
    setup = {"model": args.model, "weights": args.weights, "seq_lens": lengths, "methods": methods,
             "dense_backends": backends, "tau": tau, "keep_ratio": args.keep_ratio,
             "window": args.window, "min_keep": args.min_keep, "pool_kernel": args.pool_kernel,
             "sparse_layers": list(layers), "layer_source": source, "device": device, "dtype": args.dtype,
             "impl": args.impl, "batch": args.batch, "warmup": args.warmup, "runs": args.runs,
             "use_cache": not args.no_cache, "seed": args.seed, "prompt_file": args.prompt_file,
             "time_budget_s": args.time_budget_s, "rope_scaling": args.rope_scaling}
    print(f"prefill: {args.model} ({config.model_type}, {n_layers} layers, {args.weights} weights) "
          f"{args.dtype} on {device}; lengths {','.join(fmt_length(n) for n in lengths)}; methods {methods}; "
          f"dense backends {backends}; TSA in {len(layers)} layers ({source}), tau {tau:g} ({tau_source})")
    if max_pos and max(lengths) > max_pos:
        print(f"warning: {fmt_length(max(lengths))} exceeds the model's max_position_embeddings ({max_pos}); "
              "--rope-scaling TYPE:FACTOR stretches its RoPE")
    short = [n for n in lengths if tsa_cfg.runs_dense(n)]
    if short and any("tsa" in m for m in methods):
        print(f"note: at {','.join(fmt_length(n) for n in short)} tokens every TSA layer falls back to dense "
              f"(seq_len <= min_keep + window = {args.min_keep + args.window})")
    if args.dry_run:
        print(json.dumps(setup, indent=2))
        for n in lengths:
            for b in backends:
                for m in methods:
                    print(f"  would time {m:>20s} on {b:<14s} at {fmt_length(n):>5s}: "
                          f"{args.warmup} warm-up + {args.runs} runs")
        return 0

    model, tok = load_model(args.model, method="dense", dense_backend=backends[0], weights=args.weights,
                            dtype=args.dtype, device=device, seed=args.seed, impl=args.impl,
                            rope_scaling=args.rope_scaling)
    t_start = time.perf_counter()
    writer = ResultWriter("prefill", setup, device=device, out_dir=args.out_dir)
    timer = _Timer(device)
    use_cache = not args.no_cache
    failed_gate = False
    skipped: List[str] = []
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
    ident_base = dict(stage="prefill", batch=args.batch, heads=text_cfg.num_attention_heads,
                      kv_heads=text_cfg.num_key_value_heads, dtype=args.dtype, model=args.model, head_dim=head_dim)

    def configure(method: str, backend: str, cfg: TSAConfig = tsa_cfg):
        return configure_tsa(model, method=method, tsa_config=cfg, dense_backend=backend,
                             sparse_layers=list(layers), impl=args.impl, model_name=name, weights=args.weights,
                             sliding=args.sliding_attention)

    def emit(metric, value, method, backend, seq_len, *, tau_=None, error="", **kw):
        uses = "tsa" in method
        writer.add([{**row(metric, value, method=method, backend=backend, seq_len=seq_len,
                           tau=(tau if tau_ is None else tau_) if uses else None,
                           keep_ratio=args.keep_ratio if uses and tau_ is None else None,
                           **ident_base, **kw), "weights": args.weights, "error": error}])

    with torch.inference_mode():
        gate_ok: Dict[str, bool] = {}
        for backend in backends:
            gate_ok[backend] = True
            if args.no_check:
                continue
            n = min(min(lengths), 8192)
            ids, _ = prompt_ids(n, tokenizer=tok, vocab_size=text_cfg.vocab_size, prompt_file=args.prompt_file,
                                batch=args.batch, seed=args.seed)
            ids = ids.to(device)
            try:
                configure("dense", backend)
                ref = _forward(model, ids, use_cache)
                configure("tsa", backend, TSAConfig(tau=0.0, window=args.window, pool_kernel=args.pool_kernel,
                                                    min_keep=args.min_keep))
                got = _forward(model, ids, use_cache)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"correctness gate on {backend} failed to run: {msg}")
                emit("gate_tau0_equals_dense", 0, "tsa", backend, n, tau_=0.0, checked=False, error=msg)
                gate_ok[backend] = False
                failed_gate = True
                continue
            ok = bool(torch.equal(got, ref)) and bool(torch.isfinite(ref).all())
            emit("gate_tau0_equals_dense", int(ok), "tsa", backend, n, tau_=0.0, checked=ok)
            print(f"correctness gate on {backend} at {fmt_length(n)}: tsa(tau=0) == dense bit for bit: {ok}")
            gate_ok[backend] = ok
            failed_gate |= not ok
            del ref, got, ids
        for n in lengths:
            ids, prompt_desc = prompt_ids(n, tokenizer=tok, vocab_size=text_cfg.vocab_size,
                                          prompt_file=args.prompt_file, batch=args.batch, seed=args.seed)
            ids = ids.to(device)
            slowest = 0.0
            for backend in backends:
                dense_mean: Optional[float] = None
                for method in methods:
                    cell = f"{method} on {backend} at {fmt_length(n)}"
                    est = (args.warmup + args.runs) * slowest
                    if args.time_budget_s is not None and time.perf_counter() - t_start + est > args.time_budget_s:
                        print(f"{method:>20s} {backend:<14s} @ {fmt_length(n):>5s}: SKIPPED (time budget)")
                        skipped.append(cell)
                        continue
                    plan = configure(method, backend)
                    try:
                        res = _time_one(model, ids, use_cache, timer, args.warmup, args.runs, device)
                    except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
                        print(f"{method:>20s} {backend:<14s} @ {fmt_length(n):>5s}: "
                              f"{'OUT OF MEMORY' if oom else 'FAILED'} ({msg})")
                        emit("oom" if oom else "failed", 1, method, backend, n, checked=False, error=msg)
                        failed_gate |= not oom          # a method that crashes fails the run (exit 1)
                        if device.startswith("cuda"):
                            torch.cuda.empty_cache()
                        continue
                    ok = gate_ok[backend] and res["finite"]
                    failed_gate |= not res["finite"]
                    summ = summarize_stats(last_stats(model), plan.sparse_layers)
                    times = res["times"]
                    slowest = max(slowest, max(times))
                    mean, std, med = statistics.fmean(times), statistics.pstdev(times), statistics.median(times)
                    emit("ttft_mean_s", mean, method, backend, n, lo=mean - std, hi=mean + std, n=len(times),
                         checked=ok)
                    emit("ttft_std_s", std, method, backend, n, n=len(times), checked=ok)
                    emit("ttft_median_s", med, method, backend, n, lo=_quantile(times, 0.2),
                         hi=_quantile(times, 0.8), n=len(times), checked=ok)
                    if res["peak_gib"] is not None:
                        emit("peak_mem_gib", res["peak_gib"], method, backend, n, checked=ok)
                    extra = ""
                    if plan.tsa is not None:
                        for metric, key in (("keep_fraction", "keep_fraction"), ("attention_sparsity", "sparsity"),
                                            ("dense_fallback_layers", "fallback_layers"), ("sparse_layers", "layers")):
                            emit(metric, summ[key], method, backend, n, checked=ok)
                        extra = (f"  keep {summ['keep_fraction']:.3f} sparsity {summ['sparsity']:.3f}"
                                 f" fallback {summ['fallback_layers']}/{summ['layers']}")
                    if method == "dense":
                        dense_mean = mean if ok else None
                    speed = ""
                    if dense_mean is not None and method != "dense" and ok:
                        emit("speedup_vs_dense", dense_mean / mean, method, backend, n, checked=ok)
                        speed = f"  x{dense_mean / mean:.3f} vs dense"
                    mem = f"  peak {res['peak_gib']:.1f} GiB" if res["peak_gib"] is not None else ""
                    print(f"{method:>20s} {backend:<14s} @ {fmt_length(n):>5s}: {mean:.4f} +- {std:.4f} s "
                          f"(median {med:.4f}){mem}{extra}{speed}{'' if ok else '  [GATE FAILED]'}")
            del ids
            print(f"  prompt at {fmt_length(n)}: {prompt_desc}")
    if skipped:
        print(f"skipped for the time budget: {'; '.join(skipped)}")
    print(writer.write())
    return 1 if failed_gate else 0


def _time_one(model, ids, use_cache, timer, warmup, runs, device) -> Dict:
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        _forward(model, ids, use_cache)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, finite = [], True
    for _ in range(runs):
        logits, dt = timer(lambda: _forward(model, ids, use_cache))
        finite &= bool(torch.isfinite(logits).all())
        times.append(dt)
        del logits
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"times": times, "finite": finite, "peak_gib": peak}
