"""Data-parallel evaluation over the GPUs of one or several hosts, started by ``torchrun`` (or
``accelerate launch``, which sets the same variables; tested with ``torchrun``).

The launcher starts one process per GPU and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
nothing here spawns processes. Each rank takes every ``WORLD_SIZE``-th sample of the work
still to do (samples in the order the command lists them), runs them on ``cuda:LOCAL_RANK`` and
appends its predictions to its own shard file beside the predictions file
(``<name>.rank<r>-of-<w>.jsonl``), so a killed rank loses at most the sample it was running
and a rerun (with any number of ranks) skips everything any shard already holds. When every
rank is done, rank 0 merges the shards into the predictions file (each id once, in the
command's sample order), removes the shards, and writes the one CSV, exactly as a
single-process run would.

Only a barrier crosses processes (``torch.distributed`` with the ``gloo`` backend: no GPU
collective is involved, so it needs nothing from NCCL and also runs on CPU hosts).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env(env=None) -> World:
    """The launcher's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (a plain run: rank 0 of 1)."""
    env = os.environ if env is None else env
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {exc}") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"inconsistent launcher environment: RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local}")
    return World(rank, size, local)


def init(world: World) -> None:
    """Join the process group (gloo) when launched with several ranks; a no-op otherwise."""
    if not world.distributed:
        return
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=world.rank, world_size=world.size)


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist
        dist.barrier()


def finish(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def device_for(world: World, device: str) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under a multi-rank launch."""
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


def take(items: Sequence, world: World) -> List:
    """This rank's share: items ``rank, rank + size, ...`` (the caller's order)."""
    return list(items[world.rank::world.size])


def shard_path(predictions: Path, world: World) -> Path:
    p = Path(predictions)
    return p.with_name(f"{p.stem}.rank{world.rank}-of-{world.size}{p.suffix}")


def shard_files(predictions: Path) -> List[Path]:
    """Every shard file of ``predictions`` left by runs of any world size."""
    p = Path(predictions)
    return sorted(p.parent.glob(f"{p.stem}.rank*-of-*{p.suffix}"))


def read_records(path: Path) -> Dict[str, dict]:
    """Records of a predictions JSONL by id (first wins); a torn last line is ignored."""
    out: Dict[str, dict] = {}
    if not Path(path).exists():
        return out
    raw = Path(path).read_bytes()
    for line in raw[: raw.rfind(b"\n") + 1].decode("utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            out.setdefault(rec["id"], rec)
    return out


def merge_shards(predictions: Path, order: Iterable[str]) -> int:
    """Append to ``predictions`` every shard record it lacks, in ``order`` (ids first, then any
    others sorted), then delete the shards. Returns how many records were added."""
    predictions = Path(predictions)
    have = read_records(predictions)
    shards = shard_files(predictions)
    pending: Dict[str, dict] = {}
    for s in shards:
        for i, rec in read_records(s).items():
            if i not in have:
                pending.setdefault(i, rec)
    ids = [i for i in order if i in pending]
    ids += sorted(set(pending) - set(ids))
    if ids:
        predictions.parent.mkdir(parents=True, exist_ok=True)
        raw = predictions.read_bytes() if predictions.exists() else b""
        with open(predictions, "ab") as f:
            if raw and not raw.endswith(b"\n"):          # a torn last line: cut it off first
                f.truncate(raw.rfind(b"\n") + 1)
            for i in ids:
                f.write((json.dumps(pending[i], ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    for s in shards:
        s.unlink()
    return len(ids)
