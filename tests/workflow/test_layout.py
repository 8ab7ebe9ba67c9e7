"""Repository hygiene and the package's shape: rule scripts alone in workflow/scripts/, no large binaries tracked,
stages that import only the stages below them, no import cycle, no dead relative link in the Markdown."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from ..conftest import REPO

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
    assert {"logivote.serving.inference", "logivote.ensemble.evaluation", "logivote.data.jsonl"} <= set(graph)
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


# The recipe's stages, bottom to top: a module may import its own stage and the stages before it.
STAGES = ("data", "base", "training", "ensemble", "serving")
SHARED = {"logivote", "logivote.gpus", "logivote.logs"}  # the package root and the helpers every stage may use


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def stage_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher stage from a lower one, and every stage module importing the benchmarks."""
    found = []
    for module, deps in sorted(graph.items()):
        here = stage_of(module)
        if module in SHARED:  # the helpers import no stage at all
            found += [f"{module} -> {d}" for d in sorted(deps) if stage_of(d) or d.startswith("logivote.bench")]
            continue
        if here is None:  # logivote.bench.*: may import anything
            continue
        for dep in sorted(deps):
            there = stage_of(dep)
            if dep.startswith("logivote.bench") or (there and STAGES.index(there) > STAGES.index(here)):
                found.append(f"{module} ({here}) -> {dep} ({there or 'bench'})")
    return found


def test_every_module_sits_in_a_stage_and_imports_only_the_stages_below_it() -> None:
    graph = package_imports()
    loose = sorted(m for m in graph if stage_of(m) is None and m not in SHARED and not m.startswith("logivote.bench"))
    assert not loose, f"modules outside the stage folders: {loose}"
    assert {stage for m in graph if (stage := stage_of(m))} == set(STAGES)
    assert stage_violations(graph) == []


def test_rule_files_are_the_stages_each_opening_with_its_stage() -> None:
    """workflow/rules/ has common.smk and one file per stage, named as the package's stage folders; each says which."""
    rules = REPO / "workflow" / "rules"
    assert {p.stem for p in rules.glob("*.smk")} == {"common", *STAGES}
    for number, stage in enumerate(STAGES, start=1):
        first = (rules / f"{stage}.smk").read_text().splitlines()[0]
        assert first.startswith(f"# Stage {number}, {stage} (logivote.{stage})"), first
    snakefile = (REPO / "workflow" / "Snakefile").read_text()
    assert re.findall(r'^include: "rules/(\w+)\.smk"$', snakefile, re.M) == ["common", "data", "base", "training", "serving", "ensemble"]


def test_the_stage_check_fails_on_an_import_from_a_higher_stage() -> None:
    graph = package_imports()
    graph["logivote.data.flatten"] = graph["logivote.data.flatten"] | {"logivote.serving.client"}
    graph["logivote.logs"] = graph["logivote.logs"] | {"logivote.base.models"}
    assert stage_violations(graph) == ["logivote.data.flatten (data) -> logivote.serving.client (serving)",
                                       "logivote.logs -> logivote.base.models"]


def markdown_links() -> list[tuple[str, str]]:
    """(file, target) of every relative link in the repository's tracked Markdown files."""
    names = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    links = []
    for name in names:
        text = re.sub(r"```.*?```", "", (REPO / name).read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"[a-z][a-z0-9+.-]*:|#", target):  # http:, mailto:, in-page anchors
                links.append((name, target))
    return links


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_no_dead_relative_link_in_any_markdown_file() -> None:
    links = markdown_links()
    assert len(links) >= 5, "the README links its pages: expected relative links"
    dead = [f"{name}: {target}" for name, target in links
            if not ((REPO / name).parent / target.split("#")[0]).exists()]
    assert not dead, f"dead relative links: {dead}"



# Functions of the training stage longer than this say why in this table (issue 43: a training module that reads).
MAX_FUNCTION_LINES = 60
LONG_FUNCTIONS_WITH_A_REASON: dict[str, str] = {}


def long_functions(folder: str) -> list[str]:
    import ast

    found = []
    for path in sorted((REPO / "src" / "logivote" / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    return found


def test_no_training_function_is_longer_than_sixty_lines_without_a_stated_reason() -> None:
    unexplained = [f for f in long_functions("training") if f.split()[1] not in LONG_FUNCTIONS_WITH_A_REASON]
    assert not unexplained, unexplained
    assert long_functions("bench"), "the check finds nothing: the benchmarks' mains are over 60 lines"
