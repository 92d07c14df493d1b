"""docs/architecture.md matches the code: every module is in its table with the trl_soup modules it imports, and
SOUPTrainer stays glue (every hook it overrides is listed in its docstring and calls super(); no long method)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import trl

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trl_soup"


def internal_imports(path: Path) -> set[str]:
    """trl_soup modules imported by `path`, by their first name below trl_soup (`behavior.local` -> `behavior`)."""
    package = path.relative_to(PACKAGE).parent.parts  # () for top-level modules, ("behavior",) inside behavior/
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = list(package[: len(package) - (node.level - 1)]) if node.level > 1 else list(package)
            parts = base + (node.module.split(".") if node.module else [])
            names = [parts] if node.module else [base + [alias.name] for alias in node.names]
            for name in names:
                if name:
                    found.add(name[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trl_soup."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "trl_soup":  # the public API
            for alias in node.names:  # a module of the package, or a name of its public API
                found.add(alias.name if (PACKAGE / f"{alias.name}.py").exists() else "trl_soup")
    return found


def documented_modules() -> dict[str, set[str]]:
    rows = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        match = re.match(r"\| `([a-z_/]+?)(?:\.py|/)` \|.*\| ([^|]*) \|$", line)
        if match:
            imports = match.group(2).strip()
            rows[match.group(1)] = set() if imports == "-" else {x.strip() for x in imports.split(",")}
    return rows


def test_every_module_is_documented_with_its_imports():
    documented = documented_modules()
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    top_level = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | packages
    assert set(documented) == top_level
    for name, listed in documented.items():
        paths = sorted((PACKAGE / name).glob("*.py")) if name in packages else [PACKAGE / f"{name}.py"]
        actual = set().union(*(internal_imports(p) for p in paths)) - {name}
        if name == "relay":  # the behavior interface, named in the table as behavior.base
            listed = {"behavior" if x == "behavior.base" else x for x in listed}
        assert actual == listed, f"{name}: imports {sorted(actual)}, docs/architecture.md says {sorted(listed)}"


def test_core_imports_torch_only():
    imports = set()
    for node in ast.walk(ast.parse((PACKAGE / "core.py").read_text())):
        if isinstance(node, ast.Import):
            imports |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imports.add(node.module.split(".")[0] if node.level == 0 else ".")
    assert imports == {"__future__", "torch"}


def test_trainer_is_glue():
    tree = ast.parse((PACKAGE / "trainer.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SOUPTrainer")
    docstring = ast.get_docstring(cls)
    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef)]
    upstream = {name for klass in trl.GRPOTrainer.__mro__ for name in vars(klass)}
    overridden = [m for m in methods if m.name in upstream and m.name != "__init__"]
    assert {m.name for m in overridden} >= {
        "_generate_and_score_completions",
        "_generate_single_turn",
        "_compute_loss",
    }
    for method in overridden:
        assert f"``{method.name}``" in docstring, f"{method.name} overrides GRPOTrainer but is not in the docstring"
        calls_super = any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "super" for n in ast.walk(method)
        )
        assert calls_super, f"{method.name} does not call super()"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno + 1 <= 40, (
                f"{node.name} has {node.end_lineno - node.lineno + 1} lines"
            )


def module_graph() -> dict[str, set[str]]:
    """Every trl_soup module (dotted name) -> the trl_soup modules it imports anywhere in its file, lazy imports
    inside functions included (`from . import x` counts as an import of the submodule x when x is one, else of the
    package)."""

    def name(path: Path) -> str:
        parts = list(path.with_suffix("").relative_to(ROOT).parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + (node.module.split(".") if node.module else []))
                edges |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
            elif isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
        graph[module] = {edge for edge in edges if edge in modules and edge != module}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of `graph`: each a path that returns to its start (depth-first search)."""
    circles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return circles


def test_import_circle_detection_finds_a_circle():
    """Negative control: the search finds a circle, of any length, and only where there is one."""
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_circles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    graph = module_graph()
    assert "trl_soup.behavior.base" in graph["trl_soup.behavior"]  # relative and package imports resolved
    assert "trl_soup.sources" in graph["trl_soup.behavior.sources"]


def test_no_import_circle_in_the_package():
    """No module of trl_soup/ imports, directly or through others, a module that imports it, lazy imports included;
    config.py imports nothing of the behavior package."""
    graph = module_graph()
    assert import_circles(graph) == []
    assert not {m for m in graph["trl_soup.config"] if m.startswith("trl_soup.behavior")}


def long_functions(source: str, limit: int = 40) -> list[str]:
    """`name (lines)` of every function or method of `source` longer than `limit` lines (decorators excluded)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append(f"{node.name} ({lines})")
    return found


def test_long_function_detection():
    """Negative control: a 41-line function is found, a 40-line one and nested short ones are not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(39))
    assert long_functions(f"def short():\n{body}\n") == []
    assert long_functions(f"def long():\n{body}\n    y = 1\n") == ["long (41)"]


def test_no_function_over_40_lines_in_the_package():
    """Every function and method of every module of trl_soup/, not only the trainer's."""
    offenders = {
        str(path.relative_to(PACKAGE)): long_functions(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}
