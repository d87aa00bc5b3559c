"""Where does a TSA prefill spend its time? Dense vs TSA prefills of one model at varying lengths
(every prompt its own length, as in RULER), then a torch.profiler table of a few TSA prefills.

    python3 scripts/profile_prefill.py --model smollm2-135m --weights random --seq-len 4k --keep-ratio 0.87
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main(argv=None):
    from tsa_bench.args import parse_length
    from tsa_bench.hf import configure_tsa, load_model
    from tsa_core import TSAConfig
    from tsa_core.pipeline import selection_graphs

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--seq-len", default="4k")
    ap.add_argument("--keep-ratio", type=float, default=0.87)
    ap.add_argument("-n", type=int, default=20)
    args = ap.parse_args(argv)
    L = parse_length(args.seq_len)
    model, _ = load_model(args.model, weights=args.weights, dtype="bf16", device="cuda", method="dense")
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    prompts = [torch.randint(0, V, (1, L - int(x)), generator=g).cuda()
               for x in torch.randint(0, 120, (args.n,), generator=g)]

    def prefill(x):
        with torch.inference_mode():
            model(input_ids=x, use_cache=True, logits_to_keep=1)

    def timed(label):
        for x in prompts[:3]:
            prefill(x)
        ts = []
        for x in prompts:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            prefill(x)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        print(f"{label:28s} median {statistics.median(ts) * 1e3:7.2f} ms  mean {statistics.mean(ts) * 1e3:7.2f} ms")

    timed("dense")
    configure_tsa(model, method="tsa", tsa_config=TSAConfig(keep_ratio=args.keep_ratio), model_name=args.model,
                  weights=args.weights)
    timed("tsa (selection graphs on)")
    with selection_graphs(False):
        timed("tsa (selection graphs off)")
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for x in prompts[:3]:
                prefill(x)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
