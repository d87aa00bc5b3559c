"""Named model presets: a public ``config.json`` plus the paper's TSA settings, as data.

Each ``tsa_bench/presets/<name>.json`` holds ``name``, ``hf_id``, ``aliases``, the default
``tau``, the ``sparse_layers`` list the paper used (or ``null`` when the paper has none),
where that list came from, and ``config``: the model's architecture hyper-parameters, enough
to build it with random weights (``--weights random``) where no checkpoint is reachable.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


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

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])


@functools.lru_cache(maxsize=1)
def presets() -> Dict[str, Preset]:
    """All bundled presets by name."""
    out: Dict[str, Preset] = {}
    for path in sorted(PRESET_DIR.glob("*.json")):
        d = json.loads(path.read_text())
        layers = d.get("sparse_layers")
        out[d["name"]] = Preset(
            name=d["name"], hf_id=d.get("hf_id"), config=d["config"], tau=float(d.get("tau", 0.005)),
            sparse_layers=None if layers is None else tuple(int(i) for i in layers),
            sparse_layers_source=d.get("sparse_layers_source", ""),
            aliases=tuple(d.get("aliases", ())), notes=d.get("notes", ""))
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
