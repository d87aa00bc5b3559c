"""Import layering, read from the source with ``ast`` (nothing is imported or run).

* ``tsa_core`` has no import cycle, counting imports inside functions (a lazy import is still
  a dependency: it only moves the failure from import time to the first call);
* ``tsa_bench.hf`` (the transformers integration) imports nothing of the bench layer that
  records and runs benchmarks (``tsa_bench.provenance``, ``results``, ``commands``, ``cli``);
  path constants live in the leaf :mod:`tsa_bench.paths`;
* ``scripts/*.py`` use only public names of ``tsa_core``: no ``_private`` module, imported name
  or attribute of an imported ``tsa_core`` module.

An edge ``A -> B`` is an import written in ``A`` that names ``B``: ``import B``, ``from B import
x`` (or ``from B.x``'s module when ``x`` is itself a submodule: ``from pkg import sub`` depends on
``pkg.sub``), with relative imports resolved. The package ``__init__`` that Python runs before
a submodule is not an edge, since no code names it.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
HF_FORBIDDEN = ("tsa_bench.provenance", "tsa_bench.results", "tsa_bench.commands", "tsa_bench.cli")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path, package: str) -> Dict[str, Path]:
    """Every module of ``package`` (dotted name -> file)."""
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def imports(path: Path, name: str, known: Set[str]) -> Iterator[Tuple[str, ast.alias, int]]:
    """``(module, alias, line)`` for every import in the file of module ``name``, anywhere in it
    (module level, functions, ``if`` blocks). ``module`` is absolute; for ``from M import x`` it
    is ``M.x`` when that is a module in ``known``, else ``M``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, alias, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), alias, node.lineno


def import_graph(root: Path, package: str) -> Dict[str, Set[str]]:
    mods = package_modules(root, package)
    known = set(mods)
    return {n: {m for m, _, _ in imports(p, n, known) if m in known and m != n} for n, p in mods.items()}


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle (``[a, b, ..., a]``) per back edge of a depth-first search; empty iff acyclic."""
    state: Dict[str, int] = {}          # 1: on the current path, 2: finished
    path: List[str] = []
    cycles: List[List[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_uses(path: Path, core: Set[str]) -> List[str]:
    """``line: what`` for each private ``tsa_core`` name a script imports or reads off an
    imported ``tsa_core`` module (``import tsa_core.x as m`` ... ``m._y``)."""
    found: List[str] = []
    aliases: Set[str] = set()           # local names bound to tsa_core modules
    for mod, alias, line in imports(path, module_name(path, path.parent), core):
        if mod.split(".")[0] != "tsa_core":
            continue
        named = mod if mod in core and mod.endswith("." + alias.name) else None
        parts = mod.split(".") + ([] if named or alias.name == mod else [alias.name])
        bad = [p for p in parts if _private(p)]
        if bad:
            found.append(f"{line}: {'.'.join(parts)}")
        if named or alias.name == mod:
            aliases.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_import_graph_sees_known_edges():
    """The parser resolves absolute, lazy and submodule imports (else the checks below pass
    vacuously): the kernel imports the pattern, the pattern lazily imports its kernel, and the
    methods lazily import the flexprefill subpackage by ``from tsa_core.sparse import ...``."""
    graph = import_graph(ROOT, "tsa_core")
    assert "tsa_core.sparse.pattern" in graph["tsa_core.sparse.block_sparse.kernel"]
    assert "tsa_core.sparse.pattern_kernel" in graph["tsa_core.sparse.pattern"]
    assert "tsa_core.sparse.flexprefill" in graph["tsa_core.sparse.methods"]


def test_find_cycles_reports_a_cycle_and_accepts_a_dag():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_tsa_core_has_no_import_cycle():
    cycles = find_cycles(import_graph(ROOT, "tsa_core"))
    assert not cycles, "import cycles in tsa_core: " + "; ".join(" -> ".join(c) for c in cycles)


def test_hf_imports_nothing_of_the_bench_layer():
    hf = package_modules(ROOT, "tsa_bench/hf")
    known = set(package_modules(ROOT, "tsa_bench"))
    bad = [f"{path.relative_to(ROOT)}:{line} imports {mod}"
           for name, path in hf.items() for mod, _, line in imports(path, name, known)
           if any(mod == f or mod.startswith(f + ".") for f in HF_FORBIDDEN)]
    assert not bad, "; ".join(bad)


def test_scripts_use_only_public_tsa_core_names():
    core = set(package_modules(ROOT, "tsa_core"))
    scripts = sorted((ROOT / "scripts").glob("*.py"))
    assert scripts
    bad = [f"{p.name}:{use}" for p in scripts for use in private_uses(p, core)]
    assert not bad, "private tsa_core names used by scripts: " + "; ".join(bad)
