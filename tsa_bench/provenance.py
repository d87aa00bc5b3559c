"""Provenance recorded on every result row: when, which code, which machine, which config."""
from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import re
import subprocess
from typing import Any, Dict

from tsa_bench.paths import REPO_ROOT


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def git_info() -> Dict[str, Any]:
    """The commit and dirty flag; ``TSA_BENCH_GIT_SHA`` / ``TSA_BENCH_GIT_DIRTY`` override them
    where the tree was copied without its history (e.g. to a remote GPU machine)."""
    env_sha = os.environ.get("TSA_BENCH_GIT_SHA", "")
    if env_sha:
        return {"git_sha": env_sha, "git_dirty": os.environ.get("TSA_BENCH_GIT_DIRTY", "1") not in ("0", "")}
    sha = _git("rev-parse", "HEAD")
    if not re.fullmatch(r"[0-9a-f]{40}", sha):
        return {"git_sha": "unknown", "git_dirty": True}
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {"git_sha": sha, "git_dirty": dirty}


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001 - any import failure just means "not installed"
        return ""


def environment(device: str = "cpu") -> Dict[str, Any]:
    """Versions and the device name. Queries CUDA only when ``device`` is a CUDA device."""
    import torch

    gpu = ""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "gpu": gpu or "cpu",
        "cuda": torch.version.cuda or "",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def provenance(config: Dict[str, Any], device: str = "cpu") -> Dict[str, Any]:
    """Columns appended to every result row. ``config`` is stored as sorted JSON."""
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **git_info(),
        **environment(device),
        "config": json.dumps(config, sort_keys=True, default=str),
    }


def new_run_id(bench: str) -> str:
    """``<bench>-<UTC time to the millisecond>-<sha8>``: two runs in one second stay apart."""
    now = _dt.datetime.now(_dt.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    return f"{bench}-{stamp}-{git_info()['git_sha'][:8]}"
