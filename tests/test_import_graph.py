"""The package's import graph, read with ``ast``: no circles, no private names across modules,
and imports only in the documented direction (the README's Layout section).

``ALLOWED`` is the table the README documents ("May import: ..." of each package's
paragraph); a test below reads it back from the README, so the two cannot drift apart.
Every import counts for the direction, the ones inside functions too (a lazy import is still a
dependency); circles are looked for among module-level imports and among all of them.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "extract"

# Package (or module) of extract -> what it may import, as prefixes of module paths below
# ``extract.``: "tiers" allows extract.tiers and everything in it, "tiers.base" only that module.
ALLOWED: dict[str, frozenset[str]] = {
    "types": frozenset(),
    "errors": frozenset({"types"}),
    "settings": frozenset({"errors", "types"}),
    "spec": frozenset({"errors", "types"}),
    "validate": frozenset({"spec", "errors", "types"}),
    "examples": frozenset({"validate", "spec", "errors", "types"}),
    "providers": frozenset({"settings", "errors", "types"}),
    "tiers": frozenset({"providers", "validate", "spec", "settings", "errors", "types"}),
    "runtime": frozenset({"tiers.base", "providers", "validate", "spec", "settings", "errors", "types"}),
    "pipeline": frozenset({"runtime", "tiers", "examples", "spec", "settings", "errors", "types"}),
    "report": frozenset({"types"}),
    "testing": frozenset({"errors", "types"}),
    "front": frozenset({"pipeline", "runtime", "tiers", "providers", "examples", "report", "spec", "validate",
                        "settings", "errors", "types"}),
    "__main__": frozenset({"front"}),
}


@dataclass(frozen=True)
class Import:
    importer: str  # extract.x.y
    target: str  # the module imported (a submodule when the name is one)
    name: str | None  # the name taken from it (from-imports)
    top_level: bool  # executed at import time (not inside a function)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _walk(node: ast.AST, top: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield child, inner
        yield from _walk(child, inner)


def _imports() -> list[Import]:
    found = []
    for module, path in MODULES.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node, top in _walk(ast.parse(path.read_text(encoding="utf-8")), True):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if target.split(".")[0] != "extract":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.append(Import(module, sub if sub in MODULES else target,
                                        None if sub in MODULES else alias.name, top))
            elif isinstance(node, ast.Import):
                found += [Import(module, a.name, None, top) for a in node.names if a.name.split(".")[0] == "extract"]
    return found


IMPORTS = _imports()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(top_level_only: bool) -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if (imp.top_level or not top_level_only) and imp.target in MODULES and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    # Tarjan's strongly connected components; a component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read() -> None:
    assert "extract.pipeline" in MODULES and "extract.runtime.budget" in MODULES
    assert any(i.importer == "extract.pipeline" and i.target == "extract.runtime.cache" for i in IMPORTS)
    assert any(not i.top_level for i in IMPORTS)  # lazy imports are seen too


def test_no_import_circles_at_module_level() -> None:
    assert _cycles(top_level_only=True) == []


def test_no_import_circles_even_through_lazy_imports() -> None:
    assert _cycles(top_level_only=False) == []


def test_no_module_imports_a_private_name_of_another() -> None:
    private = [f"{i.importer} imports {i.name} from {i.target}" for i in IMPORTS
               if i.name is not None and i.name.startswith("_") and i.target != i.importer]
    assert private == []


def test_imports_go_only_in_the_documented_direction() -> None:
    wrong = []
    for imp in IMPORTS:
        here, there = _layer(imp.importer), imp.target.removeprefix("extract").removeprefix(".")
        if not here or here == _layer(imp.target):
            continue  # the facade re-exports everything; a package may import itself
        allowed = ALLOWED.get(here)
        assert allowed is not None, f"{imp.importer}: package {here!r} is missing from ALLOWED and the README"
        if not any(there == a or there.startswith(a + ".") for a in allowed):
            wrong.append(f"{imp.importer} imports {imp.target}")
    assert wrong == []


def test_every_package_is_in_the_table() -> None:
    assert {_layer(m) for m in MODULES} - {""} == set(ALLOWED)


def _readme_table() -> dict[str, frozenset[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, frozenset[str]] = {}
    for entry in re.split(r"\n(?=- \*\*`)", section):
        head = re.match(r"- \*\*`extract/([\w/]+?)(?:\.py|/)`\*\*", entry)
        may = re.search(r"May\s+import:\s(.+?)\.(?:\s|$)", entry, re.S)
        if head and may:
            names = frozenset(re.findall(r"`([\w.]+)`", may.group(1)))
            table[head.group(1).replace("/", ".")] = names
    return table


def test_the_readme_documents_the_same_table() -> None:
    assert _readme_table() == ALLOWED
