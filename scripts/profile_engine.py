"""Where the batched engine's time goes, on a model's shape with random weights (no checkpoint).

For each decode batch size and decode attention, one batch of random prompts is decoded for a
fixed number of steps with no EOS (every row runs every step), twice: the first run captures
the CUDA graph, the second is timed. Prefill of one prompt is timed too (median of repeats),
dense and TSA. With ``--trace`` a torch.profiler table of one decode batch (graph replays) and
of one prefill is printed: GPU kernel time against wall time says whether a path is bound by
the GPU or by the host.

    python3 scripts/profile_engine.py --model smollm2-135m --seq-len 4k --batch-sizes 16,32,64 --out $OUT

Writes ``engine-<run id>.csv`` (tidy rows with provenance) under ``--out``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _prompts(vocab: int, length: int, count: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(100, vocab - 100, (length,), generator=g).tolist() for _ in range(count)]


def time_prefill(engine, prompt, reps: int):
    engine.warm_prefill([prompt])
    times = []
    with torch.inference_mode():
        for _ in range(reps):
            _sync()
            t0 = time.perf_counter()
            engine._prefill(prompt)
            _sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def trace(fn, label: str, rows: int = 12):
    from torch.profiler import ProfilerActivity, profile
    _sync()
    t0 = time.perf_counter()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
        _sync()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    from torch.autograd import DeviceType
    # kernels only: an aten op's row repeats the device time of the kernels it launched
    gpu = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e3
    print(f"--- {label}: wall {wall * 1e3:.1f} ms (profiled), GPU kernels {gpu:.1f} ms")
    print(events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60))
    return wall * 1e3, gpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="preset or config (random weights)")
    p.add_argument("--seq-len", default="4k", help="prompt length (default 4k; minus the decode steps)")
    p.add_argument("--batch-sizes", default="16,32,64")
    p.add_argument("--decode-attention", default="sdpa,grouped")
    p.add_argument("--steps", type=int, default=64, help="decode steps per batch (default 64)")
    p.add_argument("--reps", type=int, default=5, help="prefill repeats (default 5)")
    p.add_argument("--tau", type=float, default=0.005)
    p.add_argument("--trace", action="store_true", help="print torch.profiler tables")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"     # CPU: a smoke run of the script only
    from tsa_bench.engine import BatchedGreedy
    from tsa_bench.hf import load_model
    from tsa_bench.results import ResultWriter, row
    from tsa_bench.args import parse_length
    from tsa_core import TSAConfig

    L = parse_length(args.seq_len)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    attns = args.decode_attention.split(",")
    rows = []
    ident = dict(model=args.model, weights="random", dtype="bf16", seq_len=L)
    for method in ("dense", "tsa"):
        model, _ = load_model(args.model, method=method, weights="random", device=device, tokenizer=False,
                           tsa_config=TSAConfig(tau=args.tau) if method == "tsa" else None)
        model.eval()
        vocab = model.config.vocab_size
        prompt_len = L - args.steps - 8
        eng = BatchedGreedy(model, batch_size=1, eos_ids=())
        med, lo, hi = time_prefill(eng, _prompts(vocab, prompt_len, 1, 0)[0], args.reps)
        rows.append(row("prefill_ms", round(med * 1e3, 3), lo=round(lo * 1e3, 3), hi=round(hi * 1e3, 3),
                        n=args.reps, method=method, stage="prefill", batch=1, **ident))
        print(f"{method}: prefill of {prompt_len} tokens {med * 1e3:.2f} ms [{lo * 1e3:.2f}, {hi * 1e3:.2f}]",
              flush=True)
        if args.trace:
            prompt = _prompts(vocab, prompt_len, 1, 0)[0]

            def one_prefill():
                with torch.inference_mode():
                    eng._prefill(prompt)
            w, g = trace(one_prefill, f"{method} prefill")
            rows.append(row("prefill_gpu_kernel_ms", round(g, 3), method=method, stage="prefill", batch=1, **ident))
        if method != "dense":
            continue
        for attn in attns:
            for B in sizes:
                eng = BatchedGreedy(model, batch_size=B, eos_ids=(), decode_attention=attn)
                prompts = _prompts(vocab, prompt_len, B, 1)
                per_step = []
                for rep in range(2):                # the first run captures the graph
                    gens = eng.generate(prompts, [args.steps] * B)
                    decode = sum(g.decode_s for g in gens)      # the batch's decode time
                    per_step.append(decode / args.steps)
                ms = per_step[-1] * 1e3
                rows.append(row("decode_ms_per_step", round(ms, 4), n=args.steps, method=method,
                                stage=f"decode-{attn}", batch=B, **ident))
                rows.append(row("decode_ms_per_row_step", round(ms / B, 4), n=args.steps, method=method,
                                stage=f"decode-{attn}", batch=B, **ident))
                print(f"decode {attn} B={B}: {ms:.3f} ms/step, {ms / B:.4f} ms per row-step "
                      f"(graph captures {eng.graph_captures})", flush=True)
                if args.trace and B == sizes[0]:
                    trace(lambda: eng.generate(prompts, [args.steps] * B), f"decode {attn} B={B} ({args.steps} steps)")
                del eng
                torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()
    config = dict(model=args.model, seq_len=L, batch_sizes=sizes, decode_attention=attns, steps=args.steps,
                  reps=args.reps, tau=args.tau)
    w = ResultWriter("engine", config, device=device, out_dir=Path(args.out))
    w.add(rows)
    print(w.write())
    return 0


if __name__ == "__main__":
    sys.exit(main())
