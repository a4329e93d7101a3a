"""The package's shape, as the README's *Architecture* section states it: no module imports one that imports
it back (imports inside functions count too), and the label hierarchy stays an extension: outside
`hierarchy/`, the CLI and the drawn demo data, no module names the phylum."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_classifier"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its `__init__`)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its body (not its own parent packages,
    which Python runs first anyway)."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        resolved = {known(target) for target in targets if target.split(".")[0] == PACKAGE.name}
        graph[module] = {t for t in resolved if t and t != module and not module.startswith(t + ".")}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other through imports (strongly connected, size > 1)."""
    reach = {module: set() for module in graph}
    for module in graph:
        stack = list(graph[module])
        while stack:
            target = stack.pop()
            if target not in reach[module]:
                reach[module].add(target)
                stack.extend(graph.get(target, ()))
    groups = {frozenset({m, *(t for t in reach[m] if m in reach[t])}) for m in graph}
    return sorted(sorted(group) for group in groups if len(group) > 1)


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph(module_files())
    assert len(graph) > 40 and graph["hf_classifier.training.run"]  # the graph was read, not empty
    assert {"hf_classifier.data.checks", "hf_classifier.models.build"} <= graph["hf_classifier.training.run"]
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = tmp_path / "hf_classifier"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("from .sources import load\n")
    (package / "data" / "sources.py").write_text("def load():\n    from ..training import run\n")
    (package / "training").mkdir()
    (package / "training" / "__init__.py").write_text("")
    (package / "training" / "run.py").write_text("from hf_classifier.data.sources import load\n")
    cycles = import_cycles(import_graph(module_files(package)))
    assert cycles == [["hf_classifier.data.sources", "hf_classifier.training.run"]]


def test_only_the_hierarchy_the_cli_and_the_demo_data_name_the_phylum():
    allowed = ("hierarchy", "cli", "quickstart")
    naming = [
        name
        for name, path in module_files().items()
        if (name.split(".") + [""])[1] not in allowed
        if "phylum" in path.read_text(encoding="utf-8").lower()
    ]
    assert naming == []
