"""The package's layers (DESIGN.md, "The shape"): no module imports a higher layer, no import cycle between subpackages.

Every module of ``monai_continual`` is parsed with :mod:`ast` (nothing is imported). A module's layer is its top-level
subpackage; the top-level modules (``cli.py``, ``__init__.py``, ``__main__.py``) are the top and may import anything,
except ``recommended.py`` (the recommended settings, plain values), the bottom: every layer may import it, and it
imports nothing of the package.
An import is ``import x``, ``from x import y`` (relative ones resolved) or ``importlib.import_module("x")`` with a
literal name, wherever it is: at module level or inside a function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "monai_continual"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

#: Lowest first; data flows down this list, never back up (DESIGN.md). A module may import its own layer and lower ones.
LAYERS = (
    "utils", "bayes", "networks", "losses", "consolidation", "data", "metrics", "strategies", "handlers", "engines",
    "nnunet", "report", "federated", "experiment",
)
TOP = "<top>"  # monai_continual/__init__.py, __main__.py, cli.py: the entry points, above every layer
BOTTOM = "<bottom>"  # monai_continual/recommended.py: the recommended settings, below every layer

#: Upward imports that stay for now, each with the reason: (importing module, imported module) -> why.
#: Add one only with a comment saying what redesign would remove it; test_known_exceptions_are_still_needed fails
#: once an exception is no longer needed, so that it is deleted here too.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    """One import statement's target, as found in ``module`` at ``line``."""

    module: str
    target: str
    line: int
    in_function: bool
    type_checking: bool

    def __str__(self) -> str:
        where = " (inside a function)" if self.in_function else " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.module}:{self.line} imports {self.target}{where}"


def module_name(path: Path, root: Path = PACKAGE_DIR) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer of a ``monai_continual`` module: its top-level subpackage, :data:`BOTTOM` or :data:`TOP`."""
    parts = module.split(".")
    if module == f"{PACKAGE}.recommended":
        return BOTTOM
    if len(parts) < 2 or not (PACKAGE_DIR / parts[1]).is_dir():
        return TOP
    return parts[1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def find_imports(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import of ``monai_continual`` in ``source`` (the text of ``module``), relative ones made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str | None, node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if target and (target == PACKAGE or target.startswith(PACKAGE + ".")):
            found.append(Import(module, target, node.lineno, in_function, type_checking))

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, in_function, type_checking)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            if base_name == PACKAGE:  # `from monai_continual import data` imports the subpackage
                for alias in node.names:
                    is_sub = (PACKAGE_DIR / alias.name).is_dir() or (PACKAGE_DIR / f"{alias.name}.py").is_file()
                    add(f"{PACKAGE}.{alias.name}" if is_sub else PACKAGE, node, in_function, type_checking)
            else:
                add(base_name, node, in_function, type_checking)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__", "optional_import"):
                add(node.args[0].value, node, in_function, type_checking)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function = True
        for field, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            for child in children:
                if isinstance(child, ast.AST):
                    skipped = isinstance(node, ast.If) and field == "body" and _is_type_checking(node.test)
                    visit(child, in_function, type_checking or skipped)

    visit(ast.parse(source), False, False)
    return found


def package_modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield module_name(path), path


def all_imports() -> list[Import]:
    return [imp for module, path in package_modules()
            for imp in find_imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")]


def _rank(layer: str) -> int:
    return -1 if layer == BOTTOM else len(LAYERS) if layer == TOP else LAYERS.index(layer)


def upward_imports(imports: list[Import]) -> list[Import]:
    return [imp for imp in imports if _rank(layer_of(imp.target)) > _rank(layer_of(imp.module))]


def subpackage_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected sets of two or more subpackages in the graph of module-level imports (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        a, b = layer_of(imp.module), layer_of(imp.target)
        if not imp.in_function and not imp.type_checking and TOP not in (a, b) and a != b:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component, key=_rank))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


# ---------------------------------------------------------------------------------------------------------------------


def test_every_subpackage_has_a_layer():
    subpackages = {p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert subpackages <= set(LAYERS), (
        f"subpackages missing from LAYERS (place them in DESIGN.md's order): {sorted(subpackages - set(LAYERS))}"
    )
    assert set(LAYERS) <= subpackages, f"LAYERS names missing subpackages: {sorted(set(LAYERS) - subpackages)}"


def test_no_module_imports_a_higher_layer():
    offending = [imp for imp in upward_imports(all_imports()) if (imp.module, imp.target) not in KNOWN_EXCEPTIONS]
    lines = [f"{imp}: layer {layer_of(imp.module)} -> {layer_of(imp.target)}" for imp in offending]
    assert not offending, "lower layers must know nothing of higher ones (DESIGN.md):\n" + "\n".join(lines)


def test_known_exceptions_are_still_needed():
    upward = {(imp.module, imp.target) for imp in upward_imports(all_imports())}
    stale = sorted(set(KNOWN_EXCEPTIONS) - upward)
    assert not stale, f"these upward imports are gone: delete them from KNOWN_EXCEPTIONS: {stale}"


def test_no_import_cycle_between_subpackages():
    imports = all_imports()
    cycles = subpackage_cycles(imports)
    details = []
    for cycle in cycles:
        members = set(cycle)
        details.append(" <-> ".join(cycle) + ":\n" + "\n".join(
            f"    {imp}" for imp in imports
            if not imp.in_function and not imp.type_checking and layer_of(imp.module) in members
            and layer_of(imp.target) in members and layer_of(imp.module) != layer_of(imp.target)))
    assert not cycles, "module-level import cycles between subpackages:\n" + "\n".join(details)


def test_the_checks_see_every_kind_of_import():
    source = """
import os
import monai_continual.experiment as e
from monai_continual.report import summary_markdown
from monai_continual import federated, __version__
from ..experiment.goals import check_goals
from . import sibling
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from monai_continual.engines import ContinualRunner

def later():
    from monai_continual.experiment.multisite_experiment import MultiSiteExperiment
    return importlib.import_module("monai_continual.federated.run")
"""
    found = find_imports(source, f"{PACKAGE}.metrics.some_module")
    assert [(i.target, i.in_function, i.type_checking) for i in found] == [
        (f"{PACKAGE}.experiment", False, False),
        (f"{PACKAGE}.report", False, False),
        (f"{PACKAGE}.federated", False, False),
        (PACKAGE, False, False),
        (f"{PACKAGE}.experiment.goals", False, False),
        (f"{PACKAGE}.metrics", False, False),
        (f"{PACKAGE}.engines", False, True),
        (f"{PACKAGE}.experiment.multisite_experiment", True, False),
        (f"{PACKAGE}.federated.run", True, False),
    ]
    upward = {i.target for i in upward_imports(found)}
    assert upward == {f"{PACKAGE}.{t}" for t in ("experiment", "report", "federated", "experiment.goals", "engines",
                                                  "experiment.multisite_experiment", "federated.run")} | {PACKAGE}
    # `from . import x` in a package's __init__ stays in the package
    assert [i.target for i in find_imports("from . import table", f"{PACKAGE}.report", is_package=True)] == [
        f"{PACKAGE}.report"
    ]
    assert layer_of(f"{PACKAGE}.cli") == layer_of(PACKAGE) == layer_of(f"{PACKAGE}.__main__") == TOP
    assert layer_of(f"{PACKAGE}.nnunet.ext_trainers.foo") == "nnunet"
    # the recommended settings are below every layer: importing them is never upward, and they import nothing
    bottom = [Import(f"{PACKAGE}.utils.x", f"{PACKAGE}.recommended", 1, False, False),
              Import(f"{PACKAGE}.recommended", f"{PACKAGE}.utils", 1, False, False)]
    assert upward_imports(bottom) == bottom[1:]


@pytest.mark.parametrize("in_function,type_checking,cycle",
                         [(False, False, True), (True, False, False), (False, True, False)])
def test_the_cycle_check_counts_module_level_imports_only(in_function, type_checking, cycle):
    imports = [Import(f"{PACKAGE}.metrics.a", f"{PACKAGE}.strategies.b", 1, False, False),
               Import(f"{PACKAGE}.strategies.b", f"{PACKAGE}.data.c", 1, False, False),
               Import(f"{PACKAGE}.data.c", f"{PACKAGE}.metrics.a", 1, in_function, type_checking)]
    assert subpackage_cycles(imports) == ([["data", "metrics", "strategies"]] if cycle else [])
