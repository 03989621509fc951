"""The layers stay as designed (CONTRIBUTING.md): writers ← beam_jobs ← imnn_stream core ←
imnn_stream.app; no import cycles, counting function-local imports; no module over 500 lines.

Reads the source with ``ast`` (imports inside functions count as much as those at the top)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("writers", "beam_jobs", "imnn_stream")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """Our modules that ``name`` imports anywhere in its body (a ``from pkg import sub``
    of a submodule counts as importing the submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [(base, a.name) for a in node.names]
        else:
            continue
        for base, attr in targets:
            if attr and f"{base}.{attr}" in MODULES:
                found.add(f"{base}.{attr}")
            elif base in MODULES:
                found.add(base)
            elif base.split(".")[0] in PACKAGES:
                # e.g. ``import writers.fs as fs`` of a module that is not there: still an edge
                found.add(base)
    found.discard(name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    # ``python -m imnn_stream`` is the command line's entry point, so it belongs to the app
    if module in ("imnn_stream.app", "imnn_stream.__main__") or module.startswith(
        "imnn_stream.app."
    ):
        return "app"
    return module.split(".")[0]


# what each layer may import (besides itself and third-party libraries)
ALLOWED = {
    "writers": {"writers"},
    "beam_jobs": {"writers", "beam_jobs"},
    "imnn_stream": {"writers", "imnn_stream"},
    "app": {"writers", "beam_jobs", "imnn_stream", "app"},
}


def test_the_packages_are_found():
    assert {"writers", "beam_jobs", "imnn_stream", "imnn_stream.app"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    bad = sorted(t for t in GRAPH[module] if _layer(t) not in ALLOWED[_layer(module)])
    assert not bad, f"{module} ({_layer(module)} layer) imports {bad}"


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_modules_are_small():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_lower_layers_name_no_upper_module_in_strings():
    """``module:function`` strings are imports too (simulators, models): a lower layer must not
    name a module of a higher one that way."""
    upper = {"writers": ("beam_jobs", "imnn_stream"), "beam_jobs": ("imnn_stream",)}
    bad = []
    for name, path in MODULES.items():
        for prefix in upper.get(_layer(name), ()):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and node.value.startswith(prefix + ".")
                    and ":" in node.value
                ):
                    bad.append(f"{name}: {node.value!r}")
    assert not bad, bad
