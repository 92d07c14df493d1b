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
