"""The package layout as ARCHITECTURE.md describes it: no import cycles, no stage importing a later
one, no module reaching into the llama.cpp backend's private state, short modules with docstrings.

Read from the source with `ast` (no module is imported), so every import counts, also the ones
inside functions that keep `toolkit --help` fast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit"
MAX_LINES = 700

# lowest first: a module may import from its own layer and the layers before it, never after
LAYERS = [
    {"toolkit", "toolkit.errors", "toolkit.io", "toolkit.console", "toolkit.params", "toolkit.models",
     "toolkit.space", "toolkit.modelfile"},
    {"toolkit.chat"},
    {"toolkit.runtime"},
    {"toolkit.data"},
    {"toolkit.train"},
    {"toolkit.export"},
    {"toolkit.serve"},
    {"toolkit.evaluate", "toolkit.gaps"},
    {"toolkit.generate", "toolkit.doctor", "toolkit.demo", "toolkit.cli", "toolkit.__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The toolkit modules `name` imports, anywhere in its body (`from pkg import mod` counts as mod)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(name == entry or name.startswith(entry + ".") for entry in layer if entry != "toolkit") or name == "toolkit":
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS here and to ARCHITECTURE.md")


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_import_cycles():
    """Tarjan's strongly connected components: any component of more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert not cycles, f"import cycles: {cycles}"


def test_no_stage_imports_a_later_one():
    wrong = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
             for a, targets in GRAPH.items() for b in targets if layer_of(b) > layer_of(a)]
    assert not wrong, "\n".join(wrong)


def test_every_toolkit_import_names_a_module_that_exists():
    """A moved module leaves no import behind (a lazy import inside a function fails only when run)."""
    missing = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("toolkit"):
                if node.module not in MODULES:
                    missing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} from {node.module}")
                    continue
                target = MODULES[node.module]
                if target.name == "__init__.py":  # `from toolkit.pkg import module`
                    missing += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.module}.{a.name}"
                                for a in node.names if f"{node.module}.{a.name}" not in MODULES and a.name != "__version__"]
            elif isinstance(node, ast.Import):
                missing += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} import {a.name}"
                            for a in node.names if a.name.startswith("toolkit") and a.name not in MODULES]
    assert not missing, missing


def test_the_cycle_checker_sees_function_level_imports(tmp_path):
    """The walk counts imports inside functions too (the old backends <-> batched cycle hid there)."""
    source = "def f():\n    from toolkit.runtime import batched\n    from .generation import Generation\n"
    tree = ast.parse(source)
    names = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert [n.module for n in names] == ["toolkit.runtime", "generation"] and names[1].level == 1


def test_only_the_llamacpp_backend_touches_its_private_model():
    """`_llm` (the loaded llama_cpp.Llama) is private to the runtime package's backends."""
    offenders = []
    for name, path in MODULES.items():
        if name.startswith("toolkit.runtime."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"_llm", "_batched", "_template"}:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} .{node.attr}")
    assert not offenders, offenders


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short_and_says_what_it_is_for(name):
    path = MODULES[name]
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (at most {MAX_LINES}): split it"
    assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(PACKAGE.parent)} opens with no docstring"
