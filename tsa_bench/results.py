"""Tidy result rows: identity columns, then metric/value/lo/hi/n/checked, then provenance.

One row per measured value. Files live at ``results/<bench>/<run_id>.csv`` and are written
once (append-only directory); the CLI prints the path as its last line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import pandas as pd

from tsa_bench.provenance import REPO_ROOT, new_run_id, provenance

IDENTITY = ["bench", "method", "backend", "stage", "seq_len", "batch", "heads", "kv_heads",
            "head_dim", "dtype", "tau", "keep_ratio", "layer", "task", "model", "weights"]
VALUES = ["metric", "value", "lo", "hi", "n", "checked"]
PROVENANCE = ["timestamp", "git_sha", "git_dirty", "gpu", "cuda", "torch", "triton",
              "transformers", "python", "host", "config"]
COLUMNS = IDENTITY + VALUES + PROVENANCE
# Whole numbers stay whole in the CSV even when some rows leave them empty (a per-length mean
# row has no seq_len): pandas would otherwise turn the column into floats ("4096.0").
INTEGER_COLUMNS = ["seq_len", "batch", "heads", "kv_heads", "head_dim", "layer", "n"]


def row(metric: str, value: Any, *, lo: Any = None, hi: Any = None, n: Any = None,
        checked: Any = None, **identity: Any) -> Dict[str, Any]:
    unknown = set(identity) - set(IDENTITY)
    if unknown:
        raise ValueError(f"unknown identity columns: {sorted(unknown)}")
    return {**identity, "metric": metric, "value": value, "lo": lo, "hi": hi, "n": n, "checked": checked}


class ResultWriter:
    """Collects rows, stamps provenance on each, and writes one CSV per run."""

    def __init__(self, bench: str, config: Dict[str, Any], device: str = "cpu",
                 out_dir: Optional[Path] = None, run_id: Optional[str] = None):
        self.bench = bench
        self.prov = provenance(config, device)
        self.out_dir = Path(out_dir) if out_dir else REPO_ROOT / "results" / bench
        self.run_id = run_id or new_run_id(bench)
        self.rows: List[Dict[str, Any]] = []

    def add(self, rows: Iterable[Dict[str, Any]]) -> None:
        for r in rows:
            self.rows.append({"bench": self.bench, **r, **self.prov})

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows)
        for col in COLUMNS:
            if col not in df.columns:
                df[col] = None
        for col in INTEGER_COLUMNS:
            num = pd.to_numeric(df[col], errors="coerce")
            whole = num == num.round()                 # False on NaN
            if whole.any() and (whole | df[col].isna()).all():
                df[col] = num.astype("Int64")
        extra = [c for c in df.columns if c not in COLUMNS]
        return df[COLUMNS + extra]

    def write(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.run_id}.csv"
        if path.exists():
            raise FileExistsError(f"{path} exists; result files are append-only")
        self.frame().to_csv(path, index=False)
        return path
