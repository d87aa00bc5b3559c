"""Provenance recorded on every result row: when, which code, which machine, which config."""
from __future__ import annotations

import datetime as _dt
import functools
import json
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict

REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def git_info() -> Dict[str, Any]:
    sha = _git("rev-parse", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if sha != "unknown" else True
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
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{bench}-{stamp}-{git_info()['git_sha'][:8]}"
