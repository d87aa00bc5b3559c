"""Data-parallel RULER: rank split, shard files, merge, and a 2-rank torchrun on CPU (gloo)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tsa_bench import distributed as D

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["ruler", "--model", "tiny-llama", "--weights", "random", "--tokenizer", "toy", "--device", "cpu",
        "--seq-lens", "512", "-n", "3", "--tasks", "niah_single_1,qa_1", "--method", "dense", "--no-progress"]


@pytest.mark.parametrize("env,world", [
    ({}, D.World(0, 1, 0)),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, D.World(1, 2, 1)),
    ({"WORLD_SIZE": "4", "RANK": "3"}, D.World(3, 4, 3)),
], ids=["plain", "torchrun", "no-local-rank"])
def test_world_from_env(env, world):
    assert D.world_from_env(env) == world


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "x"}, {"WORLD_SIZE": "0"}],
                         ids=["rank-too-big", "not-a-number", "zero"])
def test_world_from_env_rejects_bad_values(env):
    with pytest.raises(ValueError):
        D.world_from_env(env)


def test_ranks_split_every_item_once():
    items = list(range(11))
    parts = [D.take(items, D.World(r, 3, r)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == items
    assert parts[1] == [1, 4, 7, 10]


def test_device_for_rank():
    assert D.device_for(D.World(1, 2, 1), "cuda") == "cuda:1"
    assert D.device_for(D.World(1, 2, 1), "cpu") == "cpu"
    assert D.device_for(D.World(0, 1, 0), "cuda") == "cuda"


def _write(path, recs, torn=False):
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
        if torn:
            f.write('{"id": "half')


def test_merge_keeps_each_id_once_in_order_and_removes_shards(tmp_path):
    main = tmp_path / "p.jsonl"
    _write(main, [{"id": "a", "v": 1}], torn=True)                  # a torn line from a killed writer
    _write(D.shard_path(main, D.World(0, 2, 0)), [{"id": "c", "v": 3}, {"id": "a", "v": 9}])
    _write(D.shard_path(main, D.World(1, 2, 1)), [{"id": "b", "v": 2}, {"id": "d", "v": 4}], torn=True)
    _write(D.shard_path(main, D.World(2, 3, 2)), [{"id": "e", "v": 5}])   # left by a 3-rank run
    assert D.merge_shards(main, ["a", "b", "c", "d", "e"]) == 4
    recs = [json.loads(line) for line in main.read_text().splitlines()]
    assert [(r["id"], r["v"]) for r in recs] == [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]
    assert D.shard_files(main) == []


def _scores(csv):
    df = pd.read_csv(csv)
    keep = df[df.metric.str.startswith("score")]
    return keep[["metric", "task", "seq_len", "value", "lo", "hi", "n"]].reset_index(drop=True)


def _records(path):
    drop = ("model_s", "prefill_s", "decode_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in Path(path).read_text().splitlines()]


def test_two_rank_run_resumes_a_killed_ranks_shard_and_equals_one_process(tmp_path, monkeypatch):
    """Reference: one process. Then a 2-rank torchrun whose rank 1 'died' earlier, leaving a shard
    with two predictions and a torn line: the launch runs only the other samples, and the merged
    predictions and the score rows equal the one-process run's."""
    from tsa_bench.cli import main
    import torch
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*ARGS, "--out-dir", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache")]) == 0
    finally:
        torch.set_num_threads(threads)
    ref_pred = next((tmp_path / "one" / "preds").glob("*.jsonl"))
    ref = [json.loads(line) for line in ref_pred.read_text().splitlines()]
    two = tmp_path / "two"
    pred = two / "preds" / ref_pred.name
    pred.parent.mkdir(parents=True)
    _write(D.shard_path(pred, D.World(1, 2, 1)), ref[1:3], torn=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tsa_bench", *ARGS, "--out-dir", str(two), "--cache-dir", str(tmp_path / "cache")]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _records(pred) == _records(ref_pred)
    assert D.shard_files(pred) == []
    one_csv = next((tmp_path / "one").glob("*.csv"))
    two_csv = next(two.glob("*.csv"))
    pd.testing.assert_frame_equal(_scores(two_csv), _scores(one_csv))
    timing = pd.read_csv(two_csv).query("metric == 'model_s_per_sample'")
    assert timing.n.tolist() == [len(ref) - 2]                # the two stored samples were not run again
    assert set(pd.read_csv(two_csv).ranks) == {2}
