"""Compare two RULER runs of the same samples: predictions token text and score rows.

    python3 scripts/compare_runs.py A.jsonl B.jsonl [A.csv B.csv]

Prints how many predictions differ (and how many of those change the sample's score), the
paired difference of B's score to A's on their common samples (mean over tasks, 95% paired
bootstrap interval; e.g. a variant against the arm it varies), and whether the score rows of the
two CSVs are identical. Exit code 0 whatever the outcome.
"""
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def records(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        if line.strip():
            r = json.loads(line)
            out.setdefault(r["id"], r)
    return out


def main(argv):
    a, b = records(argv[0]), records(argv[1])
    common = sorted(set(a) & set(b))
    differ = [i for i in common if a[i]["pred"] != b[i]["pred"]]
    score = [i for i in differ if a[i]["score"] != b[i]["score"]]
    print(f"ids: {len(a)} vs {len(b)}, common {len(common)}; predictions differing: {len(differ)}; "
          f"scores differing: {len(score)}")
    if common:
        from tsa_bench.analysis.paired import compare
        t = compare([a[i] for i in common], [b[i] for i in common], name="B")
        for _, r in t[(t.task == "all") & t.seq_len.notna()].iterrows():
            print(f"length {int(r.seq_len)}: A {r.baseline:.2f}, B {r.score:.2f}, B - A {r['diff']:+.2f} "
                  f"[{r.diff_lo:+.2f}, {r.diff_hi:+.2f}] (paired 95% bootstrap, {int(r.n)} samples)")
    if len(argv) >= 4:
        cols = ["metric", "task", "seq_len", "value", "n"]
        sa, sb = (pd.read_csv(p) for p in argv[2:4])
        sa = sa[sa.metric.str.startswith("score")][cols].reset_index(drop=True)
        sb = sb[sb.metric.str.startswith("score")][cols].reset_index(drop=True)
        print(f"score rows identical: {sa.equals(sb)}")
        if not sa.equals(sb):
            print(pd.concat([sa, sb.value.rename("other")], axis=1).query("value != other").to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
