"""The layers import one way, flows -> mvg -> storage (docs/architecture.md), and the modules the
logged model serves with import nothing it does not ship. Read from the source, so a lazy import
inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BELOW = {"flows": {"mvg", "storage"}, "mvg": {"storage"}, "storage": set()}
SERVED_FROM = "mvg.pyfunc"  # what MLflow imports to load the model (mvg/pyfunc.py, MODEL_CODE)
NOT_SHIPPED = {"storage", "flows", "benchmarks", "zarr", "prefect", "ray", "dask", "distributed"}


def module_path(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported(module: str) -> set[str]:
    """Every module `module` imports, anywhere in its source, as absolute names."""
    names = set()
    for node in ast.walk(ast.parse(module_path(module).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            # `from mvg import inference` names a module too
            names |= {f"{node.module}.{alias.name}" for alias in node.names if module_path(f"{node.module}.{alias.name}").exists()}
    return names


def modules_of(package: str) -> list[str]:
    return sorted(f"{package}.{path.stem}" for path in (ROOT / package).glob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("package", sorted(BELOW))
def test_each_layer_imports_only_the_layers_below_it(package):
    others = set(BELOW) - {package}
    for module in modules_of(package):
        upward = {name for name in imported(module) if name.split(".")[0] in others - BELOW[package]}
        assert not upward, f"{module} imports {sorted(upward)}: {package} may import only {sorted(BELOW[package]) or 'none of them'}"


def test_the_served_modules_import_nothing_the_model_does_not_ship():
    seen, todo = set(), [SERVED_FROM]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        names = imported(module)
        outside = {name for name in names if name.split(".")[0] in NOT_SHIPPED}
        assert not outside, f"{module} (served with the model) imports {sorted(outside)}, which the model does not ship"
        todo += [name for name in names if name.split(".")[0] == "mvg" and module_path(name).exists()]
    assert {"mvg.inference", "mvg.model"} <= seen
