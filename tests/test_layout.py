"""Repository hygiene: rule scripts alone in workflow/scripts/, no large binaries tracked."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import REPO

MAX_TRACKED_BYTES = 1024 * 1024


def test_workflow_scripts_holds_only_rule_scripts() -> None:
    used = set()
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        used |= set(re.findall(r'"\.\./scripts/([^"]+)"', rules.read_text()))
    present = {p.name for p in (REPO / "workflow" / "scripts").iterdir() if p.name != "__pycache__"}
    assert present == used, f"not a rule script: {sorted(present - used)}; missing: {sorted(used - present)}"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_no_tracked_file_over_one_megabyte() -> None:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    big = [n for n in names if n and (REPO / n).is_file() and (REPO / n).stat().st_size > MAX_TRACKED_BYTES]
    assert not big, f"tracked files over 1 MB (wheels, models, logs belong outside git): {big}"


def package_imports() -> dict[str, set[str]]:
    """Each module of src/logivote -> the logivote modules it imports, at the top or inside a function."""
    import ast

    root = REPO / "src" / "logivote"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                deps.add(target)
                deps |= {f"{target}.{alias.name}" for alias in node.names}  # `from . import x` names a module
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_two_package_modules_import_each_other() -> None:
    """No import cycle among logivote's modules, directly or through others (function-level imports count)."""
    graph = package_imports()
    assert {"logivote.inference", "logivote.evaluation", "logivote.jsonl"} <= set(graph)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
