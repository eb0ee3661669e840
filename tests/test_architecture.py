"""The house's walls, checked on the source: which package may import which, no import cycle,
and MTurk named only behind the crowd-platform seam (``include/crowd/mturk/``)."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import botocore.session
import pytest
from conftest import PROJECT_ROOT

PACKAGES = ("include", "plugins", "dags", "benchmarks", "testsupport")


def _module_name(path: Path) -> str:
    relative = path.relative_to(PROJECT_ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "plugins":  # the plugins folder is on sys.path: mturk_provider.hooks...
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def _sources() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            found[_module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return found


def _imports(module: str) -> set[str]:
    """Every module ``module`` imports (at any level, also inside functions)."""
    path, tree = _sources()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _ours(name: str) -> str | None:
    """The module of ours that ``name`` is (or is inside), else None."""
    sources = _sources()
    while name:
        if name in sources:
            return name
        name = name.rpartition(".")[0]
    return None


def _importers(of: str, within: str) -> dict[str, set[str]]:
    return {
        module: hits
        for module in _sources()
        if module == within or module.startswith(within + ".")
        if (hits := {n for n in _imports(module) if n == of or n.startswith(of + ".")})
    }


@pytest.mark.parametrize(
    ("within", "forbidden"),
    [
        ("include.crowd_sandbox", "include.crowd"),  # a generic MTurk, not ours
        ("include.crowd_sandbox", "include.demo"),
        ("include.image_similarity", "include.crowd"),
        ("include.image_similarity", "include.demo"),
        ("include.crowd", "include.image_similarity"),
        ("include.crowd", "include.demo"),
        ("include.common", "include.crowd"),
        ("include.common", "include.image_similarity"),
        ("include", "airflow"),
        ("include", "mturk_provider"),
        ("benchmarks", "tests"),
        ("plugins", "dags"),
    ],
)
def test_dependencies_run_one_way(within, forbidden):
    assert _importers(forbidden, within) == {}


def test_no_import_cycle():
    graph = {
        module: {ours for name in _imports(module) if (ours := _ours(name)) and ours != module}
        for module in _sources()
    }
    # A package's __init__ is imported by its submodules' import: that is not a cycle.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def _mturk_operation_names() -> set[str]:
    model = botocore.session.get_session().get_service_model("mturk")
    names = set(model.operation_names)
    snake = {re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", n).lower() for n in names}
    return names | snake


def test_only_the_mturk_adapter_knows_mturk():
    """No module of include/crowd outside include/crowd/mturk calls or names an MTurk
    operation (``create_hit``, ``SendBonus``...) or imports boto3 or botocore, whose errors are
    MTurk's (the S3 ledger, publishing and the workers' gold records excepted: S3 stays as it
    is)."""
    operations = _mturk_operation_names()
    allowed_boto = {
        "include.crowd.ledger",
        "include.crowd.publish",
        "include.crowd.worker_records",
    }  # S3
    offenders = {}
    for module, (_path, tree) in _sources().items():
        if not module.startswith("include.crowd.") or module.startswith("include.crowd.mturk"):
            continue
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in operations:
                found.add(node.attr)
            elif isinstance(node, ast.Name) and node.id in operations:
                found.add(node.id)
        imported = {n.split(".")[0] for n in _imports(module)}
        if module not in allowed_boto and imported & {"boto3", "botocore"}:
            found.add("imports boto3/botocore")
        if found:
            offenders[module] = sorted(found)
    assert offenders == {}


def test_production_calls_mturk_only_through_the_hook():
    """Outside the hook, nothing of the product builds an MTurk client (tests, their support
    and benchmarks may: they drive the crowd sandbox directly)."""
    builders = {}
    for module, (_path, tree) in _sources().items():
        if module == "mturk_provider.hooks.mturk" or module.startswith(
            ("benchmarks", "testsupport")
        ):
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "client"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "mturk"
            ):
                builders.setdefault(module, []).append(node.lineno)
    assert builders == {}
