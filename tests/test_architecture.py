"""The package layout as ARCHITECTURE.md describes it: no import cycles, no stage importing a later
one, no module reaching into the llama.cpp backend's private state, short modules with docstrings.

Read from the source with `ast` (no module is imported), so every import counts, also the ones
inside functions that keep `toolkit --help` fast."""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit"
MAX_LINES = 700

# lowest first: a module may import from its own layer and the layers before it, never after
LAYERS = [
    {"toolkit", "toolkit.errors", "toolkit.io", "toolkit.console", "toolkit.params", "toolkit.models",
     "toolkit.space", "toolkit.options", "toolkit.modelfile"},
    {"toolkit.chat"},
    {"toolkit.runtime"},
    {"toolkit.data"},
    {"toolkit.train"},
    {"toolkit.export"},
    {"toolkit.serve"},
    {"toolkit.evaluate", "toolkit.gaps"},
    {"toolkit.synth"},
    {"toolkit.generate", "toolkit.doctor", "toolkit.demo", "toolkit.cli", "toolkit.__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(name: str) -> str:
    """The package relative imports in module `name` start from."""
    return name if name in MODULES and MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def targets(node: ast.Import | ast.ImportFrom, package: str, modules: Collection[str]) -> set[str]:
    """The toolkit modules one import statement names (`from pkg import mod` counts as mod)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    found = {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules}


def imports_of(name: str) -> set[str]:
    """The toolkit modules `name` imports, anywhere in its body."""
    path = MODULES[name]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= targets(node, package_of(name), MODULES)
    return found - {name}


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


# -- lazy imports: only heavy modules wait inside functions -------------------------------------
# Libraries that make `toolkit CMD --help` measurably slower: it imports CMD's module (`toolkit
# --help` imports none; all of them took ~180 ms, `python -X importtime -m toolkit --help`). Measured with
# `python -X importtime -c "import X"`: rich 31 ms (rich.progress 65), yaml 20, jinja2.sandbox 54,
# starlette.applications 70, httpx 95, uvicorn 21, tokenizers 12, sacrebleu 31, rouge_score 1900,
# huggingface_hub.hf_api 190, ollama 280, numpy 110, pyarrow 160, pandas 380; safetensors alone is
# light, but its .torch loads torch. A toolkit module that imports one when it is imported, directly
# or through another toolkit module, is heavy.
HEAVY_LIBRARIES = frozenset({
    "torch", "transformers", "peft", "trl", "accelerate", "llama_cpp", "optuna", "bert_score", "sklearn",
    "numpy", "scipy", "matplotlib", "datasets", "pyarrow", "pandas", "gguf", "selenium", "safetensors",
    "tokenizers", "huggingface_hub", "sacrebleu", "rouge_score", "starlette", "uvicorn", "httpx", "ollama",
    "jinja2", "rich", "yaml",
})
CYCLE_NOTE = "# cycle:"  # on a function-level import of a light module: moving it up would make a cycle


def _walk_outside_functions(nodes: list[ast.stmt]) -> Iterator[ast.stmt]:
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _walk_outside_functions(node.orelse)  # the body runs only under a type checker
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _walk_outside_functions([n for n in getattr(node, field, []) if isinstance(n, ast.stmt)
                                                or isinstance(n, (ast.ExceptHandler, ast.match_case))])


def imports_at_import_time(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: not inside a function, not under
    `if TYPE_CHECKING:` (class bodies and module-level try/if blocks run, so they count)."""
    return [n for n in _walk_outside_functions(tree.body) if isinstance(n, (ast.Import, ast.ImportFrom))]


def imports_in_functions(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    found = {id(i): i for f in functions for i in ast.walk(f) if isinstance(i, (ast.Import, ast.ImportFrom))}
    return sorted(found.values(), key=lambda n: n.lineno)


def libraries(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The top-level packages an absolute import statement names (`torch.nn` -> torch)."""
    if isinstance(node, ast.Import):
        return {a.name.split(".")[0] for a in node.names}
    return {node.module.split(".")[0]} if node.module and not node.level else set()


def heavy_modules(trees: dict[str, ast.Module], package_of=package_of) -> set[str]:
    """The toolkit modules whose import loads a heavy library, directly or through toolkit modules
    they import when imported (a fixed point over the import-time edges)."""
    heavy = {name for name, tree in trees.items()
             if any(libraries(n) & HEAVY_LIBRARIES for n in imports_at_import_time(tree))}
    edges = {name: set().union(*(targets(n, package_of(name), trees) for n in imports_at_import_time(tree)))
             for name, tree in trees.items()}
    grew = True
    while grew:
        more = {name for name, out in edges.items() if name not in heavy and out & heavy}
        heavy |= more
        grew = bool(more)
    return heavy


def lazy_light_imports(sources: dict[str, tuple[str, str]], package_of=package_of) -> list[tuple[str, ast.stmt, str]]:
    """(module, statement, 'path:line: import text') for each function-level import of toolkit
    modules none of which is heavy: nothing is saved by waiting, and the module's dependencies are
    hidden. `sources` maps module name -> (path shown, source). A `# cycle: why` note on the
    statement's lines exempts it."""
    trees = {name: ast.parse(text, path) for name, (path, text) in sources.items()}
    heavy = heavy_modules(trees, package_of)
    found = []
    for name, tree in trees.items():
        path, text = sources[name]
        lines = text.splitlines()
        for node in imports_in_functions(tree):
            names = targets(node, package_of(name), trees) - {name}
            if not names or names & heavy:
                continue
            if any(CYCLE_NOTE in line for line in lines[node.lineno - 1 : node.end_lineno]):
                continue
            shown = " ".join(ast.get_source_segment(text, node).split()).replace("( ", "(").replace(", )", ")")
            found.append((name, node, f"{path}:{node.lineno}: {shown}"))
    return found


def toolkit_sources() -> dict[str, tuple[str, str]]:
    return {name: (str(path.relative_to(PACKAGE.parent)), path.read_text()) for name, path in MODULES.items()}


def test_the_lazy_import_check_tells_heavy_from_light_modules():
    """A module is heavy through another one, TYPE_CHECKING and function-level imports of a heavy
    library do not count, and a `# cycle:` note exempts one import."""
    sources = {
        "toolkit.a": ("a.py", "import torch\n"),
        "toolkit.b": ("b.py", "from toolkit import a\n"),
        "toolkit.c": ("c.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import numpy\n"
                              "def f():\n    import torch\n"),
        "toolkit.d": ("d.py", "def f():\n    from toolkit.b import x\n    from toolkit import c\n"
                              "    from toolkit.c import (\n        y,  # cycle: c imports d\n    )\n"
                              "    import toolkit.c\n    from .c import z\n"),
    }
    trees = {name: ast.parse(text) for name, (_, text) in sources.items()}
    parent = lambda name: name.rpartition(".")[0]  # noqa: E731
    assert heavy_modules(trees, parent) == {"toolkit.a", "toolkit.b"}
    found = [shown for _, _, shown in lazy_light_imports(sources, parent)]
    assert found == ["d.py:3: from toolkit import c", "d.py:7: import toolkit.c", "d.py:8: from .c import z"]


def test_function_level_imports_are_of_heavy_modules_only():
    """A function-level import of a toolkit module that loads no heavy library hides a dependency
    and saves nothing: it belongs at the top of the module (see HEAVY_LIBRARIES). Where moving it up
    would make an import cycle, the line says so: `# cycle: <why>`."""
    found = [shown for _, _, shown in lazy_light_imports(toolkit_sources())]
    assert not found, f"{len(found)} function-level imports of light toolkit modules:\n" + "\n".join(found)
