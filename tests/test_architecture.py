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
