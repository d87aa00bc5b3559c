"""Shared argument parsing helpers (lengths with k suffixes, comma lists)."""
from __future__ import annotations

from typing import List

from tsa_bench.cli import UsageError


def add_model_load_arguments(p) -> None:
    """``--weights``, ``--device`` and ``--dtype`` of the commands that load a model
    (``prefill``, ``profile-layers``, ``ruler``, ``niah``): one definition of their choices."""
    p.add_argument("--weights", default="pretrained", choices=["pretrained", "random"],
                   help="load the checkpoint, or build the architecture with random weights (stated in every row)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="weights dtype (default bf16)")


def parse_length(text: str) -> int:
    """``"4k"`` -> 4096, ``"128K"`` -> 131072, ``"1000"`` -> 1000."""
    t = text.strip().lower()
    try:
        value = int(t[:-1]) * 1024 if t.endswith("k") else int(t)
    except ValueError:
        raise UsageError(f"bad length {text!r}: use integers or k-suffixed values like 4k, 128k") from None
    if value < 1:
        raise UsageError(f"lengths must be positive, got {text!r}")
    return value


def parse_lengths(text: str) -> List[int]:
    """``"4k,8k,16k"`` or a range ``"4k..128k"`` (doubling) -> sorted unique lengths."""
    out: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ".." in part:
            lo, hi = (parse_length(x) for x in part.split("..", 1))
            if hi < lo:
                raise UsageError(f"empty range {part!r}")
            n = lo
            while n <= hi:
                out.append(n)
                n *= 2
        else:
            out.append(parse_length(part))
    if not out:
        raise UsageError(f"no lengths in {text!r}")
    return sorted(set(out))


def parse_floats(text: str, name: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--{name} takes comma-separated numbers, got {text!r}") from None


def fmt_length(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)
