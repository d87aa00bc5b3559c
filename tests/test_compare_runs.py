"""scripts/compare_runs.py: counts differing predictions and gives B's paired score difference to A."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _write(path, scores):
    with open(path, "w", encoding="utf-8") as f:
        for i, (task, s) in enumerate(scores):
            f.write(json.dumps({"id": f"{task}-4096-{i:05d}", "task": task, "max_length": 4096,
                                "score": s, "pred": f"p{s}"}) + "\n")


def test_paired_difference_of_two_runs(tmp_path):
    # task a: A right on 4/4, B on 2/4; task b: both right on 2/4 (same samples): B - A = -25 points
    a = [("a", 1.0)] * 4 + [("b", 1.0), ("b", 1.0), ("b", 0.0), ("b", 0.0)]
    b = [("a", 1.0), ("a", 0.0), ("a", 1.0), ("a", 0.0)] + a[4:]
    _write(tmp_path / "A.jsonl", a)
    _write(tmp_path / "B.jsonl", b)
    out = subprocess.run([sys.executable, str(ROOT / "scripts/compare_runs.py"), str(tmp_path / "A.jsonl"),
                          str(tmp_path / "B.jsonl")], capture_output=True, text=True, check=True).stdout
    assert "predictions differing: 2; scores differing: 2" in out
    assert "A 75.00, B 50.00, B - A -25.00 [" in out
