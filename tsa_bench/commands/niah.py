"""``tsa-bench niah``: the paper's needle-in-a-haystack sweep, lengths x depths, one score per cell.

PAPER.md §2.2 (appendix, Fig. 7): the needle "The best thing to do in San Francisco is eat a
sandwich and sit in Dolores Park on a sunny day." at depths ``linspace(0, 100, 10)`` of essay
haystacks of 8000..128000 tokens (step 8000), 30 generated tokens, scored by ROUGE-1 F. The
budget rule and the haystack are those of the RULER generator (:mod:`tasks.ruler`); the score is
ROUGE-1 F x 100 (the paper's heat map shows x 10). Rows are tidy: one per (length, depth), with
a ``depth`` column; the heat map is drawn by the reporting command from the CSV.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

from tsa_bench.args import fmt_length, parse_floats, parse_lengths, resolve_model_arg
from tsa_bench import distributed as D
from tsa_bench.cli import UsageError
from tsa_bench.commands import ruler as R

NAME = "niah"
HELP = "Needle-in-a-haystack sweep (paper appendix): lengths x depths grid, ROUGE-1 per cell."
EPILOG = """examples:
  tsa-bench niah --model meta-llama/Llama-3.1-8B-Instruct --method tsa --tau 0.005 --paper-grid
  tsa-bench niah --model meta-llama/Llama-3.1-8B-Instruct --method dense --seq-lens 32k,64k,128k --depths 5
  tsa-bench niah --model M --seq-lens 8k..128k --depths 0,25,50,75,100 --essays ~/PaulGrahamEssays/
  tsa-bench niah --model tiny-llama --weights random --tokenizer toy --device cpu --seq-lens 2k --depths 3
  tsa-bench niah --model M --paper-grid --dry-run

--paper-grid = lengths 8000, 16000, ..., 128000 and 10 depths, as in the paper. Haystack: the
Paul Graham essays when available (--essays, TSA_RULER_ESSAYS, the datasets cache), the
project's generated prose otherwise (recorded in the data_source column).
"""

PAPER_LENGTHS = tuple(range(8000, 128001, 8000))


def add_arguments(p) -> None:
    R.add_model_arguments(p)
    R.add_data_arguments(p)
    p.add_argument("--seq-lens", default="8k..128k", help="context lengths (default 8k..128k, doubling)")
    p.add_argument("--depths", default="10",
                   help="number of evenly spaced depths in [0, 100] (default 10), or a comma list of percents")
    p.add_argument("--paper-grid", action="store_true", help="the paper's 16 lengths x 10 depths")


def parse_depths(text: str) -> List[float]:
    t = text.strip()
    if "," not in t and "." not in t:
        try:
            k = int(t)
        except ValueError:
            raise UsageError(f"--depths takes a count or a comma list of percents, got {text!r}") from None
        if k < 1:
            raise UsageError(f"--depths count must be >= 1, got {k}")
        return [0.0] if k == 1 else [round(100.0 * i / (k - 1), 4) for i in range(k)]
    depths = parse_floats(t, "depths")
    for d in depths:
        if not 0.0 <= d <= 100.0:
            raise UsageError(f"--depths must be percents in [0, 100], got {d}")
    return depths


def run(args) -> int:
    from tasks.ruler.tasks import sweep_spec
    from tsa_bench.provenance import REPO_ROOT
    from tsa_bench.results import row

    R.check_common(args)
    lengths = list(PAPER_LENGTHS) if args.paper_grid else parse_lengths(args.seq_lens)
    depths = parse_depths("10" if args.paper_grid else args.depths)
    if min(lengths) < 256:
        raise UsageError(f"--seq-lens must be >= 256 tokens, got {min(lengths)}")
    if "," in str(args.method):
        raise UsageError(f"niah runs one --method at a time, got {args.method!r} (ruler takes a comma list)")
    if D.world_from_env().distributed:
        raise UsageError("niah runs in one process (its sweep is a few cells); launch it without torchrun, "
                         "or shard `tsa-bench ruler --tasks niah_single_1,...` instead")
    resolve_model_arg(args, lengths)          # default model (SmolLM2 <= 8K, Gemma-3-270M <= 32K), context check
    args.tau = R.resolve_tau(args)            # --tau > the --sparse-layers profile's tau > the preset's > 0.005
    device = R.resolve_device(args.device)
    if args.dry_run:
        print(f"model {args.model} ({args.weights} weights), method {args.method}, tau {args.tau}, "
              f"{args.dtype} on {device}")
        print(f"lengths ({len(lengths)}): {', '.join(fmt_length(L) for L in lengths)}")
        print(f"depths ({len(depths)}): {', '.join(f'{d:g}' for d in depths)} -> {len(lengths) * len(depths)} cells")
        return 0
    model, tok, template, gen = R.setup(args, device)
    cells = {(L, d): gen.samples(sweep_spec(d), L, 1)[0] for L in lengths for d in depths}
    engine = R.make_engine(args, model, lengths)
    key_parts, identity, key = R.run_identity(args, gen, template, model=model,
                                              engine="batched" if engine is not None else "hf-generate")
    key_parts["bench"] = "niah"
    key = R.run_key(key_parts)
    out_dir = Path(args.out_dir) if args.out_dir else REPO_ROOT / "results" / "niah"
    plog = R.open_predictions(args, out_dir, key)
    timings: Dict[int, R.Timing] = {}
    try:
        for L in lengths:
            timings[L] = R.evaluate_samples(model, tok, [cells[(L, d)] for d in depths], plog, device=device,
                                            progress=not args.no_progress, desc=f"niah {fmt_length(L)}",
                                            engine=engine, stats_fn=R.tsa_stats_fn(model),
                                            warn=lambda m: print(m, file=sys.stderr))
    finally:
        plog.close()
    extra = dict(template=template, predictions=str(plog.path))
    rows, grid = [], {}
    for (L, d), s in cells.items():
        r = plog.done[s["id"]]
        value = round(100.0 * float(r["score"]), 2)
        rows.append({**row("rouge1_f", value, n=1, task="niah_sweep", seq_len=L, **identity), **extra,
                     "depth": d, "needle_depth_actual": s["depth"][0], "data_source": s["source"]})
        grid.setdefault(f"{d:g}", {})[fmt_length(L)] = value
    rows += R.timing_rows(timings, identity, extra)
    import pandas as pd
    table = pd.DataFrame(grid).T
    table.index.name = "depth %"
    config = {**key_parts, "seq_lens": lengths, "depths": depths, "run_key": key,
              "data_source": next(iter(cells.values()))["source"]}
    print()
    print(f"Needle in a haystack, ROUGE-1 F x 100 (paper heat map: x 10), {args.model}, method {args.method}"
          + (f", tau {args.tau}" if R.uses_tsa(args.method) else ""))
    print(table.to_string())
    R.print_timings(timings)
    print(R.write_results("niah", rows, config, device, out_dir, key))
    return 0
