"""The package's dependency graph points one way (docs/ARCHITECTURE.md).

Every module is parsed, imports inside functions included. The test fails on an import cycle, on
an import that runs up the layer order below, on a private name imported from another package,
and when more than a few modality comparisons live outside ``graftkit/modalities/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "src" / "graftkit"

# Lowest first; a module may import its own layer and those before it. First match wins, so a
# module named on its own comes before its package's wildcard.
LAYERS: list[tuple[str, list[str]]] = [
    ("leaves", ["errors", "registry", "threads", "train.progress", "train.device"]),
    ("config and run directory", ["config", "run"]),
    ("pure evaluation", ["evaluate.metrics", "evaluate.multilabel", "evaluate.calibration",
                         "evaluate.analysis",
                         "evaluate.reference", "evaluate.plots"]),
    ("data and weight files", ["data", "data.*", "train.checkpoint"]),
    ("model adapters", ["models", "models.*"]),
    ("techniques", ["robustness.corruptions", "robustness.perturbations", "robustness.bench",
                    "robustness.text_bench", "robustness.audio_perturbations",
                    "robustness.plots", "explain.methods", "explain.audio",
                    "explain.text", "explain.text_html", "explain.overlay",
                    "explain.faithfulness", "explain.images", "explain.text_run",
                    "evaluate.report", "evaluate.compare", "evaluate", "audit.findings"]),
    ("modalities", ["modalities", "modalities.*"]),
    ("strategies", ["strategies", "strategies.*"]),
    ("training", ["train", "train.*"]),
    ("session", ["session"]),
    ("run handle", ["inference"]),
    ("launch", ["launch"]),
    ("consumers", ["explain", "explain.*", "robustness", "robustness.*", "export",
                   "export.*", "audit", "audit.*"]),
    ("services", ["serve", "serve.*", "search", "search.*"]),
    ("facade", ["api", "demo", ""]),
    ("command line", ["cli", "cli.*"]),
]
# Edges the layer order allows but the design does not.
FORBIDDEN = [("train", "robustness"), ("evaluate.report", "explain"),
             ("evaluate.report", "robustness")]
MAX_MODALITY_COMPARISONS = 4  # outside graftkit/modalities/ (34 before the modality seam)
ALLOWED_PRIVATE: set[str] = set()  # "importer -> module._name", each with a reason in its file


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


MODS = _modules()


def _layer(mod: str) -> int:
    for i, (_, patterns) in enumerate(LAYERS):
        for p in patterns:
            if mod == p or (p.endswith(".*") and mod.startswith(p[:-1])):
                return i
    raise AssertionError(f"module graftkit.{mod} has no layer: add it to LAYERS")


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        name = node.module or ""
        return name.removeprefix("graftkit").lstrip(".") if name.startswith("graftkit") else "?"
    base = mod.split(".") if mod else []
    if not is_pkg:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str) -> str | None:
    while name and name not in MODS:
        name = name.rpartition(".")[0]
    return name if name in MODS else None


def _imports() -> tuple[dict[str, set[str]], list[str]]:
    """graftkit-internal edges (module -> imported modules) and private cross-package names."""
    edges: dict[str, set[str]] = {m: set() for m in MODS}
    private = []
    for mod, f in MODS.items():
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(mod, f.name == "__init__.py", node)
                if base == "?":
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}" if base else a.name
                    targets.append(sub if sub in MODS else base)
                    top = lambda m: m.split(".")[0]  # noqa: E731
                    if a.name.startswith("_") and not a.name.startswith("__") and \
                            base in MODS and top(base) != top(mod):
                        private.append(f"{mod} -> {base}.{a.name}")
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("graftkit").lstrip(".") for a in node.names
                           if a.name.startswith("graftkit")]
            for t in targets:
                k = _known(t)
                # graftkit/__init__ holds __version__ and lazy re-exports: an edge into it is
                # not a dependency on what it re-exports (as in ../shared/tools/import_graph.py)
                if k and k != mod:
                    edges[mod].add(k)
    return edges, private


EDGES, PRIVATE = _imports()


def test_every_module_has_a_layer() -> None:
    for mod in MODS:
        _layer(mod)


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in EDGES[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in MODS:
        if v not in index:
            strong(v)
    assert cycles == []


def test_imports_run_down_the_layers() -> None:
    upward = [f"graftkit.{m} ({LAYERS[_layer(m)][0]}) imports graftkit.{t} "
              f"({LAYERS[_layer(t)][0]})"
              for m, ts in EDGES.items() for t in ts if _layer(t) > _layer(m)]
    assert upward == []


@pytest.mark.parametrize(("low", "high"), FORBIDDEN)
def test_forbidden_edges(low: str, high: str) -> None:
    def under(m: str, p: str) -> bool:
        return m == p or m.startswith(p + ".")

    bad = [(m, t) for m, ts in EDGES.items() for t in ts if under(m, low) and under(t, high)]
    assert bad == []


def test_nothing_imports_the_facade() -> None:
    users = sorted(m for m, ts in EDGES.items() if "api" in ts)
    assert set(users) <= {"", "demo", "cli.main", "cli.search"}, users


def test_no_private_names_across_packages() -> None:
    assert set(PRIVATE) <= ALLOWED_PRIVATE, PRIVATE


def _mentions_modality(node: ast.AST) -> bool:
    names = {"image", "text", "audio"}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and sub.value in names:
            return True
        if isinstance(sub, ast.Name) and "modality" in sub.id:
            return True
        if isinstance(sub, ast.Attribute) and "modality" in sub.attr:
            return True
        if isinstance(sub, ast.Constant) and sub.value == "modality":  # meta.get("modality")
            return True
    return False


def modality_comparisons() -> list[str]:
    """``==``/``!=``/``in`` comparisons that involve a modality name or value, outside
    graftkit/modalities/ (a comparison's own operands, not the whole expression around it)."""
    found = []
    for mod, f in MODS.items():
        if mod == "modalities" or mod.startswith("modalities."):
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(
                    isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                if any(_mentions_modality(x) for x in [node.left, *node.comparators]):
                    found.append(f"{f.relative_to(ROOT.parent)}:{node.lineno}")
    return found


def test_modality_is_decided_in_the_modality_modules() -> None:
    found = modality_comparisons()
    assert len(found) <= MAX_MODALITY_COMPARISONS, found
