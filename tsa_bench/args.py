"""Shared argument parsing helpers (lengths with k suffixes, comma lists)."""
from __future__ import annotations

import sys
from typing import List

from tsa_bench.cli import UsageError


def add_model_load_arguments(p) -> None:
    """``--weights``, ``--device``, ``--dtype`` and ``--rope-scaling`` of the commands that load a
    model (``prefill``, ``profile-layers``, ``ruler``, ``niah``): one definition of their choices."""
    p.add_argument("--weights", default="pretrained", choices=["pretrained", "random"],
                   help="load the checkpoint, or build the architecture with random weights (stated in every row)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="weights dtype (default bf16)")
    p.add_argument("--rope-scaling", default=None, metavar="TYPE:FACTOR",
                   help="RoPE scaling applied to the model's config before loading, to run past its trained "
                        "context: yarn:F, linear:F or dynamic:F (e.g. yarn:4 turns SmolLM2's 8K into 32K)")


def add_sliding_argument(p) -> None:
    """``--sliding-attention`` of the commands that prefill a hybrid model with its own sliding
    layers (``prefill``, ``ruler``, ``niah``): the choices of ``tsa_bench.hf.attention.SLIDING_PREFILL``."""
    p.add_argument("--sliding-attention", default="mask", choices=["mask", "banded"],
                   help="prefill of a hybrid model's sliding-window layers (Gemma 3): mask = transformers' SDPA "
                        "with the layer's L x L mask, as the plain model (default); banded = the same call on "
                        "query chunks against the keys their window reaches (same result up to rounding, "
                        "O(L x window) work; docs/models.md). No effect on other models")


def resolve_model_arg(args, lengths: List[int]) -> None:
    """Fill ``args.model`` when it is omitted and check ``lengths`` against its trained context.

    No ``--model``: SmolLM2-135M when every length is <= 8K, else Gemma-3-270M up to 32K (with
    ``--rope-scaling TYPE:F`` the limits are F times longer). A length past the model's trained
    context without ``--rope-scaling`` is a UsageError naming that flag (random weights have no
    trained context and are not checked). Also validates ``--rope-scaling``. With ``--dry-run``
    a model that cannot be resolved here (not installed, not cached) is noted, not an error.
    """
    from tsa_bench.hf.checkpoints import parse_rope_scaling, trained_context
    from tsa_bench.hf.presets import ROPE_FLAG, default_model

    try:
        scaling = parse_rope_scaling(getattr(args, "rope_scaling", None))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    factor = scaling["factor"] if scaling else 1.0
    if args.model is None:
        try:
            args.model = default_model(lengths, factor)
        except ValueError as exc:
            raise UsageError(f"MODEL is required: {exc}") from None
        print(f"model: {args.model} (the default for {fmt_length(max(lengths))} tokens; --model to choose)",
              file=sys.stderr)
    if args.weights == "random":
        return
    try:
        trained = trained_context(args.model, args.weights)
    except ValueError as exc:
        if not getattr(args, "dry_run", False):
            raise UsageError(str(exc)) from None
        print(f"note: the context of {args.model} was not checked: {exc}", file=sys.stderr)
        return
    longest = max(lengths)
    if trained is None or longest <= trained * factor:
        return
    if scaling is None:
        need = -(-longest // trained)
        raise UsageError(f"{fmt_length(longest)} tokens is past {args.model}'s trained context of {fmt_length(trained)}: "
                         f"add {ROPE_FLAG} yarn:{need} (or linear:{need}) to stretch its RoPE, or choose a "
                         "longer-context --model")
    raise UsageError(f"{fmt_length(longest)} tokens is past {args.model}'s {fmt_length(trained)} context even with "
                     f"{ROPE_FLAG} {args.rope_scaling} (x{factor:g} = {fmt_length(int(trained * factor))}): "
                     f"use a factor >= {-(-longest // trained)}")


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
