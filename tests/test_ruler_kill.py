"""``tsa-bench ruler`` killed with SIGKILL part-way and run again: the resumed run scores
exactly what an uninterrupted run scores, runs only what was missing, and its predictions file
holds every sample once. The killed run is a real process running the real CLI, with no hook in
the product code: the test watches its predictions file and kills it. The resumed and the
uninterrupted runs call the same CLI in this process (one interpreter start less each)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("qa_1", "qa_2")           # 32 generated tokens each: the fastest tasks that fit 512 tokens
N = 4
KILL_AFTER = 2                     # predictions on disk before the kill (6 more to go: ~0.1 s each)
SCORE_METRICS = ("score", "score_mean_tasks", "score_mean_lengths")
SCORE_COLUMNS = ["task", "seq_len", "metric", "value", "lo", "hi", "n", "nulls", "data_source", "metric_kind"]


def _args(out_dir: Path, cache_dir: Path):
    return ["ruler", "--model", "tiny-llama", "--weights", "random", "--tokenizer", "toy", "--device", "cpu",
            "--dtype", "fp32", "--method", "tsa", "--seq-lens", "512", "-n", str(N), "--tasks", ",".join(TASKS),
            "--data", "generated", "--words", "builtin", "--no-progress", "--out-dir", str(out_dir),
            "--cache-dir", str(cache_dir)]


def _env():
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    # one thread: on a loaded 2-core machine two OpenMP threads make this tiny model 20x slower
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


def _kill_after(proc, preds_dir: Path, n: int, timeout: float = 240.0) -> Path:
    """SIGKILL ``proc`` as soon as a predictions file under ``preds_dir`` holds ``n`` lines."""
    deadline = time.monotonic() + timeout
    while True:
        files = list(preds_dir.glob("*.jsonl")) if preds_dir.exists() else []
        if files and files[0].read_bytes().count(b"\n") >= n:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return files[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {n} predictions could be seen")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {n} predictions within {timeout} s")
        time.sleep(0.005)


def _score_rows(csv_path: str):
    import pandas as pd
    df = pd.read_csv(csv_path)
    rows = df[df["metric"].isin(SCORE_METRICS)][SCORE_COLUMNS]
    return rows.sort_values(["metric", "task"]).reset_index(drop=True), df


def _records(path: Path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _run_here(argv, capsys):
    """``tsa-bench`` in this process: (exit code, stdout, stderr)."""
    from tsa_bench.cli import main
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_run_killed_mid_way_and_resumed_equals_an_uninterrupted_run(tmp_path, capsys, one_thread):
    cache, killed_out, ref_out = tmp_path / "cache", tmp_path / "killed", tmp_path / "reference"
    victim = subprocess.Popen([sys.executable, "-m", "tsa_bench", *_args(killed_out, cache)], cwd=ROOT, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        preds = _kill_after(victim, killed_out / "preds", KILL_AFTER)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    done = preds.read_bytes().count(b"\n")                  # complete lines; a torn tail is dropped on resume
    assert KILL_AFTER <= done < N * len(TASKS)                # killed part-way, not after the end
    assert not list(killed_out.glob("*.csv"))                 # it never reached the results

    code, out, err = _run_here(_args(killed_out, cache), capsys)
    assert code == 0, err[-2000:]
    assert f"({done} already scored)" in err
    rows, df = _score_rows(out.strip().splitlines()[-1])
    code, ref_out_text, err = _run_here(_args(ref_out, cache), capsys)
    assert code == 0, err[-2000:]
    ref_rows, _ = _score_rows(ref_out_text.strip().splitlines()[-1])

    import pandas as pd
    pd.testing.assert_frame_equal(rows, ref_rows)
    ran = df.loc[df["metric"] == "model_s_per_sample", "n"].tolist()
    assert ran == [N * len(TASKS) - done]                     # the resumed run ran only the rest

    recs = _records(preds)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == N * len(TASKS)        # no prediction lost or duplicated
    ref_recs = {r["id"]: r for r in _records(next((ref_out / "preds").glob("*.jsonl")))}
    assert set(ids) == set(ref_recs)
    for r in recs:
        assert (r["pred"], r["prompt_sha"], r["score"]) == \
            (ref_recs[r["id"]]["pred"], ref_recs[r["id"]]["prompt_sha"], ref_recs[r["id"]]["score"]), r["id"]
