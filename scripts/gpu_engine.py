"""Check the batched greedy engine against plain ``model.generate`` on real RULER prompts.

For every sample of a check set (RULER tasks at one length, the model's own tokenizer and
template), both paths decode greedily with the same stopping rule; the tokens are compared.
Where they differ, the reference's logit margin (top-1 minus top-2 of generate's scores) at the
first differing step is recorded, and the sample is decoded again by both paths in fp32: a
bf16 near-tie shows as a small margin and agreement in fp32. Per-sample model time of both
paths is recorded too (same samples, same GPU, same run).

    python3 scripts/gpu_engine.py --model smollm2-135m --seq-len 4k -n 2 --methods dense,tsa --out $OUT

Writes ``engine-<run id>.csv`` (tidy rows with provenance) under ``--out`` and prints a summary.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def reference(model, ids, max_new, device):
    """Plain generate (the runner's greedy settings), with per-step scores."""
    from tsa_bench.commands.ruler import greedy_config
    gc = greedy_config(model, max_new)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc,
                             output_scores=True, return_dict_in_generate=True)
    _sync(device)
    dt = time.perf_counter() - t0
    toks = out.sequences[0, x.shape[1]:].tolist()
    eos = set(gc.eos_token_id if isinstance(gc.eos_token_id, list) else [gc.eos_token_id])
    for j, t in enumerate(toks):             # generate pads after EOS when batch 1 ends early
        if t in eos:
            toks = toks[: j + 1]
            break
    return toks, [s[0].float() for s in out.scores], dt


def margin(scores, step):
    top = torch.topk(scores[step], 2).values
    return float(top[0] - top[1])


def first_diff(a, b):
    for j, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return j
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv=None) -> int:
    from tasks.ruler.generate import GENERATOR_VERSION, GenConfig, Generator, encode_prompt, prompt_of
    from tasks.ruler.tasks import resolve_tasks
    from tsa_bench.args import parse_length
    from tsa_bench.commands.ruler import resolve_template
    from tsa_bench.engine import BatchedGreedy
    from tsa_bench.hf import configure_tsa, load_model
    from tsa_bench.results import ResultWriter, row
    from tsa_core import TSAConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seq-len", default="4k")
    ap.add_argument("--tasks", default="all")
    ap.add_argument("-n", type=int, default=2, help="samples per task")
    ap.add_argument("--methods", default="dense,tsa")
    ap.add_argument("--tau", type=float, default=0.005)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--refill", action="store_true", help="continuous batching in the engine")
    ap.add_argument("--decode-attention", default="sdpa", choices=["sdpa", "grouped"],
                    help="the engine's decode attention (tsa_bench.hf.attention.set_decode_attention)")
    ap.add_argument("--template", default="auto")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    device = args.device
    L = parse_length(args.seq_len)
    model, tok = load_model(args.model, method="dense", dtype="bf16", device=device)
    template = resolve_template(args.template, tok)
    gen = Generator(tok, GenConfig(template=template, data="generated", words="builtin"),
                    cache_dir=Path(args.out) / "cache")
    tasks = resolve_tasks(args.tasks)
    gen.generate(tasks, [L], args.n)
    samples = [s for t in tasks for s in gen.samples(t, L, args.n)]
    prompts = [encode_prompt(tok, prompt_of(s)) for s in samples]
    max_new = [int(s["tokens_to_generate"]) for s in samples]
    print(f"{len(samples)} samples at {L} tokens, template {template}", flush=True)

    rows = []
    ident = dict(model=args.model, seq_len=L, weights="pretrained",
                 stage=f"decode-{args.decode_attention}" + ("-refill" if args.refill else ""))
    for method in args.methods.split(","):
        cfg = TSAConfig(tau=args.tau) if method != "dense" else None
        plan = configure_tsa(model, method=method, tsa_config=cfg, model_name=args.model)
        model.to(torch.bfloat16)
        engine = BatchedGreedy(model, batch_size=args.batch_size, decode_attention=args.decode_attention,
                               refill=args.refill)
        engine.generate(prompts[:1], [2])                      # capture the graph outside the timing
        _sync(device)
        t0 = time.perf_counter()
        fast = engine.generate(prompts, max_new)
        _sync(device)
        engine_wall = time.perf_counter() - t0
        ref_s, diffs = 0.0, []
        for i, (s, p, m) in enumerate(zip(samples, prompts, max_new)):
            toks, scores, dt = reference(model, p, m, device)
            ref_s += dt
            d = first_diff(toks, fast[i].tokens)
            rec = dict(task=s["task"], method=method, dtype="bf16", tau=args.tau if cfg else None, **ident)
            rows.append({**row("equal_tokens", int(d is None), n=len(toks), **rec), "sample": s["id"],
                         "first_diff": d, "margin_at_diff": None if d is None or d >= len(scores) else
                         round(margin(scores, d), 5)})
            if d is not None:
                diffs.append(i)
        n = len(samples)
        rows.append(row("engine_s_per_sample", round(engine_wall / n, 6), n=n, method=method, dtype="bf16",
                        task="all", **ident))
        rows.append(row("generate_s_per_sample", round(ref_s / n, 6), n=n, method=method, dtype="bf16",
                        task="all", **ident))
        rows.append(row("equal_fraction", round(1 - len(diffs) / n, 4), n=n, method=method, dtype="bf16",
                        task="all", **ident))
        print(f"{method}: {n - len(diffs)}/{n} equal; engine {engine_wall / n:.4f} s/sample, "
              f"generate {ref_s / n:.4f} s/sample ({plan.layer_source})", flush=True)
        if diffs:                                  # the differing samples again, both paths in fp32
            model.to(torch.float32)
            eng32 = BatchedGreedy(model, batch_size=args.batch_size, cuda_graphs=False,
                                  decode_attention=args.decode_attention, refill=args.refill)
            fast32 = eng32.generate([prompts[i] for i in diffs], [max_new[i] for i in diffs])
            for j, i in enumerate(diffs):
                toks32, _, _ = reference(model, prompts[i], max_new[i], device)
                rows.append({**row("equal_tokens_fp32", int(toks32 == fast32[j].tokens), n=len(toks32),
                                   task=samples[i]["task"], method=method, dtype="fp32",
                                   tau=args.tau if cfg else None, **ident), "sample": samples[i]["id"]})
            model.to(torch.bfloat16)
            print(f"  fp32 re-check of the {len(diffs)} differing samples: "
                  f"{sum(r['value'] for r in rows if r['metric'] == 'equal_tokens_fp32' and r['method'] == method)}"
                  f" equal", flush=True)
    config = dict(model=args.model, seq_len=L, tasks=tasks, n=args.n, methods=args.methods, tau=args.tau,
                  batch_size=args.batch_size, template=template, generator=GENERATOR_VERSION,
                  decode_attention=args.decode_attention, refill=args.refill)
    w = ResultWriter("engine", config, device=device, out_dir=Path(args.out))
    w.add(rows)
    print(w.write())
    return 0


if __name__ == "__main__":
    sys.exit(main())
