"""Every package the code imports is declared in pyproject.toml: the project's own modules need
the dependencies, tests and benchmarks may also use the `dev` extra. A package that arrives only
as some other package's dependency can vanish with that package's next release."""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
OWN = {"mvg", "flows", "storage", "tests", "benchmarks"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(*groups: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(line).name) for group in groups for line in group}


@functools.cache
def providers() -> dict[str, list[str]]:
    """Import name -> the installed distributions that provide it (slow to build: once per session)."""
    return metadata.packages_distributions()


def third_party_imports(folder: str) -> dict[str, set[str]]:
    """Top-level module -> the files of `folder` that import it (anywhere in the file)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names} - OWN - set(sys.stdlib_module_names) - {"__future__"}:
                found.setdefault(top, set()).add(f"{folder}/{path.name}")
    return found


@pytest.mark.parametrize(
    ("folder", "allowed"),
    [
        ("mvg", declared(PROJECT["dependencies"])),
        ("flows", declared(PROJECT["dependencies"])),
        ("storage", declared(PROJECT["dependencies"])),
        ("tests", declared(PROJECT["dependencies"], PROJECT["optional-dependencies"]["dev"])),
        ("benchmarks", declared(PROJECT["dependencies"], PROJECT["optional-dependencies"]["dev"])),
    ],
)
def test_every_imported_package_is_declared(folder, allowed):
    distributions = providers()
    undeclared = {
        module: sorted(files)
        for module, files in third_party_imports(folder).items()
        if not {canonicalize_name(name) for name in distributions.get(module, [module])} & allowed
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_prefect_runs_offline_from_any_entry_point():
    """A benchmark or a user's script that imports a flow without the CLI still gets Prefect with its
    telemetry off (the temporary server would otherwise try the network) and the longer start-up
    limit a busy 2-core machine needs."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_")}
    probe = (
        "import flows.ablate\n"
        "from prefect.settings import get_current_settings\n"
        "server = get_current_settings().server\n"
        "print(server.analytics_enabled, server.ephemeral.startup_timeout_seconds)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "120"]
