"""Rebuild the committed accuracy-study CSVs from the committed raw runs and check them.

    PYTHONPATH=. python scripts/rebuild_accuracy.py            # rebuild into a temp folder, compare
    PYTHONPATH=. python scripts/rebuild_accuracy.py --out-dir /tmp/rebuilt --only smollm2-4k-grid

Each entry of :data:`REBUILDS` names a committed CSV (``results/accuracy/...``) and the
``tsa-bench study`` command that made it, with the run folders written as ``{b}/smol-8k``: the
folder ``runs/smol-8k`` of the archive ``b`` of :data:`ARCHIVES` (the GPU sessions' raw
predictions, ``results/accuracy/runs-*.t?z``). The script extracts those folders, runs the
commands, and compares every committed row with the rebuilt one: same identity columns, same
``value``/``lo``/``hi``/``n`` (exactly; the CSVs hold rounded numbers). Provenance columns and the
``predictions`` path (the extraction folder differs) are not compared. A rebuilt file may hold
rows of metrics added to `study` after the committed file was written (:data:`ADDED_METRICS`),
and nothing else new. Exit 0 when every file matches, 1 otherwise, 2 on a missing archive.

What it guards: a committed number that its command and raw runs do not give (a hand edit, a
run folder left out when merging sessions, a `study` change that moves published numbers).
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
ACC = ROOT / "results" / "accuracy"
ARCHIVES = {
    "a": ACC / "runs-20261130-h200x2.tgz",      # first GPU session of the accuracy study
    "b": ACC / "runs-20261130b-h200x2.txz",     # second
    "c": ACC / "runs-20261130c-h200x2.txz",     # third
    "d": ACC / "runs-20261130d-h200x2.txz",     # fourth
    "e": ACC / "runs-20261130e-h200x2.txz",     # fifth
    "f": ACC / "runs-20261130f-h200x2.txz",     # sixth
    "g": ACC / "runs-20261130g-h200x2.txz",     # seventh (its gemma-32k-banded holds the sixth's arms too)
    "h": ACC / "runs-20261130h-h200.txz",       # eighth (one H200, two machines: gemma-speed-32k-banded and -b)
}
# metrics `study` writes now that older committed files lack
ADDED_METRICS = {"attention_speedup_untouched", "predictions_changed"}
# name -> (committed CSV, its path relative to results/accuracy, study subcommand and arguments)
REBUILDS: Dict[str, tuple] = {
    "smollm2-4k-grid": ("accuracy-20261130T135159679Z-2a1d13ed.csv",
                        ["tables", "{b}/smol-4k-fast", "{c}/smol-4k-fast", "{d}/smol-4k-fast",
                         "--speed-from", "{d}/smol-speed2-4k", "--model-name", "smollm2-135m"]),
    "smollm2-8k-grid": ("accuracy-20261130T135203359Z-2a1d13ed.csv",
                        ["tables", "{b}/smol-8k", "{c}/smol-8k", "--speed-from", "{d}/smol-speed2-8k",
                         "--model-name", "smollm2-135m"]),
    "gemma-4k-16k": ("accuracy-20261130T135109101Z-ecc808d1.csv",
                     ["tables", "{e}/gemma-all", "--model-name", "gemma3-270m"]),
    "gemma-32k-grid": ("accuracy-20261130T135112352Z-ecc808d1.csv",
                       ["tables", "{b}/gemma-32k", "{d}/gemma-32k", "{e}/gemma-32k-fresh", "--model-name",
                        "gemma3-270m", "--method-layers", "5,11,17"]),
    "gemma-32k-banded-grid": ("accuracy-20261130T181607194Z-db401147.csv",
                              ["tables", "{g}/gemma-32k-banded", "--speed-from", "{h}/gemma-speed-32k-banded",
                               "--speed-from", "{h}/gemma-speed-32k-banded-b", "--model-name", "gemma3-270m-banded",
                               "--method-layers", "5,11,17"]),
    "gemma-32k-banded-speed-layers": ("layers/layers-20261130T181609956Z-db401147.csv",
                                      ["layers", "{h}/gemma-speed-32k-banded", "--model-name", "gemma3-270m-banded"]),
    "gemma-32k-banded-speed-layers-b": ("layers/layers-20261130T181612667Z-db401147.csv",
                                        ["layers", "{h}/gemma-speed-32k-banded-b", "--model-name",
                                         "gemma3-270m-banded"]),
    "smollm2-4k-speed": ("speed-h200/all-arms/accuracy-20261130T114923074Z-45233965.csv",
                         ["tables", "{d}/smol-speed2-4k", "--model-name", "smollm2-135m"]),
    "smollm2-8k-speed": ("speed-h200/all-arms/accuracy-20261130T114925754Z-45233965.csv",
                         ["tables", "{d}/smol-speed2-8k", "--model-name", "smollm2-135m"]),
    "smollm2-4k-layers": ("layers/layers-20261130T115302313Z-3a4506c8.csv",
                          ["layers", "{d}/smol-speed2-4k", "--model-name", "smollm2-135m"]),
    "smollm2-8k-layers": ("layers/layers-20261130T115305894Z-3a4506c8.csv",
                          ["layers", "{d}/smol-speed2-8k", "--model-name", "smollm2-135m"]),
    "gemma-32k-layers": ("layers/layers-20261130T132918851Z-dadccfb4.csv",
                         ["layers", "{b}/gemma-32k", "{d}/gemma-32k", "{e}/gemma-32k-fresh",
                          "--model-name", "gemma3-270m"]),
    "gemma-4k-16k-layers": ("layers/layers-20261130T132921847Z-dadccfb4.csv",
                            ["layers", "{e}/gemma-all", "--model-name", "gemma3-270m"]),
    "gemma-32k-banded-layers": ("layers/layers-20261130T170148177Z-d987177c.csv",
                                ["layers", "{g}/gemma-32k-banded", "--model-name", "gemma3-270m-banded"]),
    "gemma-32k-banded-vs-mask": ("../gemma/banded-vs-mask/twins-20261130T170153475Z-d987177c.csv",
                                 ["twins", "{g}/gemma-32k-banded", "--against", "{b}/gemma-32k", "{d}/gemma-32k",
                                  "{e}/gemma-32k-fresh", "--model-name", "gemma3-270m-banded"]),
    "smollm2-4k-sensitivity": ("sensitivity-20261130T092443390Z-c5d8fd3a.csv",
                               ["sensitivity", "{a}/smol-sens", "--drift", "results/layers/smollm2-135m-4k.json",
                                "--model-name", "smollm2-135m"]),
    "gemma-32k-sensitivity": ("sensitivity-20261130T092432003Z-c5d8fd3a.csv",
                              ["sensitivity", "{b}/gemma-sens", "--drift", "results/layers/gemma3-270m-32k.json",
                               "--model-name", "gemma3-270m"]),
}
NOT_COMPARED = {"timestamp", "git_sha", "git_dirty", "gpu", "cuda", "torch", "triton", "transformers", "python",
                "host", "config", "predictions", "twin_predictions"}
VALUES = ["value", "lo", "hi", "n"]


def extract(archive: Path, folders: Sequence[str], dest: Path) -> Path:
    """``runs/<folder>/...`` of ``archive`` for each folder, into ``dest``; returns ``dest / "runs"``."""
    wanted = tuple(f"runs/{f}/" for f in folders)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(wanted)]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}    # Python >= 3.11.4 / 3.10.12
        tar.extractall(dest, members=members, **safe)
    return dest / "runs"


def placeholder(arg: str):
    """``("b", "smol-8k")`` for an argument ``{b}/smol-8k``; None for any other argument."""
    return tuple(arg[1:].split("}/", 1)) if arg.startswith("{") and "}/" in arg else None


def resolve(args: List[str], roots: Dict[str, Path]) -> List[str]:
    """``args`` with each ``{archive}/folder`` replaced by that folder's extracted path."""
    return [str(roots[p[0]] / p[1]) if (p := placeholder(a)) else a for a in args]


def compare(committed: Path, rebuilt: Path) -> List[str]:
    """Differences between the committed CSV and the rebuilt one (empty: they agree)."""
    import pandas as pd

    a, b = pd.read_csv(committed), pd.read_csv(rebuilt)
    problems = []
    new = set(b.metric) - set(a.metric)
    if new - ADDED_METRICS:
        problems.append(f"rebuilt rows of metrics the committed file lacks: {sorted(new - ADDED_METRICS)}")
    b = b[b.metric.isin(set(a.metric))]
    missing = sorted(set(a.columns) - set(b.columns) - NOT_COMPARED)
    if missing:
        problems.append(f"rebuilt file lacks columns {missing}")
        return problems
    keys = [c for c in a.columns if c not in NOT_COMPARED and c not in VALUES]

    def canon(df):
        out = df[keys + VALUES].copy()
        for c in keys:                  # plain strings, "" for a missing value (pandas' NA compares as NA)
            out[c] = [("" if v != v or v is None else str(v)) for v in out[c].astype(object)]
        return out.sort_values(keys + VALUES, na_position="last").reset_index(drop=True)

    ca, cb = canon(a), canon(b)
    if len(ca) != len(cb):
        problems.append(f"{len(ca)} committed rows, {len(cb)} rebuilt (metrics the committed file has)")
        return problems
    for c in keys:
        bad = (ca[c] != cb[c]).sum()
        if bad:
            problems.append(f"column {c}: {bad} rows differ")
    for c in VALUES:
        x, y = pd.to_numeric(ca[c], errors="coerce"), pd.to_numeric(cb[c], errors="coerce")
        bad = ~(((x - y).abs() <= 1e-12) | (x.isna() & y.isna()))
        if bad.any():
            i = int(bad.idxmax())
            problems.append(f"{c}: {int(bad.sum())} rows differ, e.g. {ca.loc[i, 'metric']} "
                            f"{ca.loc[i, 'setting'] if 'setting' in ca else ''}: {x[i]} committed, {y[i]} rebuilt")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help=f"comma list of entries (default all: {', '.join(REBUILDS)})")
    ap.add_argument("--out-dir", default=None, help="where the rebuilt CSVs go (default a temporary folder)")
    args = ap.parse_args(argv)

    from tsa_bench.cli import main as cli

    names = list(REBUILDS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in REBUILDS]
    if unknown:
        print(f"--only: unknown entries {unknown}; known: {', '.join(REBUILDS)}", file=sys.stderr)
        return 2
    absent = [str(p) for p in ARCHIVES.values() if not p.exists()]
    if absent:
        print(f"missing archives: {', '.join(absent)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders: Dict[str, set] = {}
        for name in names:
            for key, folder in filter(None, map(placeholder, REBUILDS[name][1])):
                folders.setdefault(key, set()).add(folder)
        roots = {k: extract(ARCHIVES[k], sorted(v), tmp / k) for k, v in folders.items()}
        out_root = Path(args.out_dir) if args.out_dir else tmp / "rebuilt"
        failed = 0
        for name in names:
            committed, cmd = REBUILDS[name]
            out = out_root / f"{name}.csv"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.unlink(missing_ok=True)
            rc = cli(["study", *resolve(cmd, roots), "--out", str(out)])
            problems = [f"`study {cmd[0]}` exit {rc}"] if rc != 0 else compare(ACC / committed, out)
            failed += bool(problems)
            print(f"{'OK  ' if not problems else 'DIFF'} {name}: {committed}", flush=True)
            for p in problems:
                print(f"     {p}")
        print(f"{len(names) - failed} of {len(names)} committed CSVs rebuilt from the raw runs as committed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
