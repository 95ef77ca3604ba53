"""docs/architecture.md's rule, checked: data flows one way, data -> models -> engine -> retrieval ->
cli / service, so a module imports agman modules only from its own layer and the layers to its left
(the top-level helpers agman.errors, agman.fileio and agman.render serve every layer)."""
from __future__ import annotations

import ast
from pathlib import Path

import agman

LAYERS = ["data", "models", "engine", "retrieval", "service", "cli"]
RANK = {name: i for i, name in enumerate(LAYERS)}  # the CLI may start the service (`agman serve`), not the reverse
PACKAGE = Path(agman.__file__).parent


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``agman.*`` import in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(node.lineno, n) for n in names if n == "agman" or n.startswith("agman.")]
    return out


def test_modules_import_only_from_their_layer_and_the_layers_to_its_left():
    wrong = []
    for layer in LAYERS:
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                target = parts[1] if len(parts) > 1 else ""
                if target not in RANK or target == layer:
                    continue
                if RANK[target] > RANK[layer]:
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} ({layer} -> {target})")
    assert not wrong, "imports against the flow data -> models -> engine -> retrieval -> cli / service:\n" + \
        "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from agman.retrieval.search import Retriever\n")
    assert _imports(bad) == [(2, "agman.retrieval.search")]


# --------------------------------------------------------------------------- the module graph
def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the package at ``root``, function-level imports
    included; ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in files else node.module)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = {e for e in edges if e in files and e != name and (e == top or e.startswith(top + "."))}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another in a ring (strongly connected, more than one)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm, recursive: the graph is a few hundred modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def backend_leaks(graph: dict[str, set[str]], registry: str = "agman.retrieval.backends") -> list[str]:
    """Imports of a backend module (anything below the registry) from outside ``backends/``."""
    return sorted(f"{m} imports {t}" for m, targets in graph.items() if not m.startswith(registry)
                  for t in targets if t.startswith(registry + "."))


def test_no_import_cycles_between_modules():
    cycles = import_cycles(module_graph())
    assert not cycles, "modules importing one another (function-level imports count):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


def test_no_backend_module_is_imported_from_outside_backends():
    leaks = backend_leaks(module_graph())
    assert not leaks, "reach a backend through agman.retrieval.backends (the registry):\n" + "\n".join(leaks)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "agman"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checks_see_a_planted_cycle_and_a_planted_backend_import(tmp_path):
    root = _package(tmp_path, {
        "a.py": "import agman.b\n",
        "b.py": "def f():\n    from agman import c\n",  # function-level, and a submodule named by from-import
        "c.py": "from agman.a import thing\n",
        "d.py": "from agman.a import thing\n",  # imports into the ring, not part of it
        "retrieval/__init__.py": "",
        "retrieval/backends/__init__.py": "from agman.retrieval.backends import faiss\n",
        "retrieval/backends/faiss/__init__.py": "",
        "retrieval/backends/faiss/store.py": "import agman.retrieval.backends.faiss\n",
        "retrieval/search.py": "from agman.retrieval.backends import open_store\n"
                               "def f():\n    from agman.retrieval.backends.faiss.store import FaissStore\n",
    })
    graph = module_graph(root)
    assert import_cycles(graph) == [["agman.a", "agman.b", "agman.c"]]
    assert backend_leaks(graph) == ["agman.retrieval.search imports agman.retrieval.backends.faiss.store"]
