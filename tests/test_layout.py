"""The package's layout: no import circle, and the docs name only modules that exist."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder → the package it installs as (pyproject.toml's package-dir).
SOURCES = {"steplaw_opt": "steplaw_opt", "priors": "steplaw_opt.priors",
           "samplers": "steplaw_opt.samplers"}  # fmt: skip


def package_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder, package in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the package modules it imports, at module level or inside a function (a lazy
    import closes a circle as surely as an eager one), and the modules named in a ``_LAZY``
    table (:mod:`steplaw_opt._lazy`). ``from pkg import name`` points at ``pkg.name`` when that
    is a module, else at ``pkg``."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                graph[module].update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    graph[module].add(sub if sub in modules else node.module)
            elif (  # _LAZY = {"Name": "package.module"}: imported on first use
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
                and isinstance(node.value, ast.Dict)
            ):
                graph[module].update(
                    v.value
                    for v in node.value.values
                    if isinstance(v, ast.Constant) and v.value in modules
                )
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), plus
    self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package() -> None:
    modules = package_modules()
    assert len(modules) > 30  # the walk found the package
    assert cycles(import_graph(modules)) == []


WORKFLOW = ("steplaw_opt.tune", "steplaw_opt.cli")


def test_tracking_and_plots_import_no_workflow_code() -> None:
    graph = import_graph(package_modules())
    for module in ("steplaw_opt.tracking", "steplaw_opt.plots._study", "steplaw_opt.plots._fit"):
        workflow = {
            m for m in graph[module] if m.startswith(("steplaw_opt.tune", "steplaw_opt.cli"))
        }
        assert workflow == set(), f"{module} imports {workflow}"


def test_every_folder_is_a_package_that_a_wheel_ships() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for module, path in package_modules().items():
        if path.name == "__init__.py":
            assert f'"{module}"' in text, f"pyproject.toml does not ship {module}"


# Dotted names in the docs: steplaw_opt.x.y (a module or an attribute of one).
DOTTED = re.compile(r"\bsteplaw_opt(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
PATHS = re.compile(r"\b((?:steplaw_opt|priors|samplers|scripts|examples|docs|tests)/[\w./-]+)")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            obj = importlib.import_module(name)
            for attr in parts[i:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return False


DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_only_modules_that_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = sorted({d for d in DOTTED.findall(text) if not _resolves(d.rstrip("."))})
    assert missing == [], f"{doc.name} names {missing}"
    for path in sorted(set(PATHS.findall(text))):
        path = path.rstrip(".,:;)")
        source = path.replace("steplaw_opt/priors/", "priors/").replace(
            "steplaw_opt/samplers/", "samplers/"
        )
        if "*" in source or "<" in source:
            continue
        # samplers/<name> is also an OptunaHub package name (registry root optunahub/).
        exists = (ROOT / source).exists() or (ROOT / "optunahub" / source).exists()
        assert exists, f"{doc.name} names {path}, which does not exist"


@pytest.mark.parametrize("module", ["steplaw_opt", "steplaw_opt.cli"])
def test_python_dash_m_runs_the_cli(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "predict" in out.stdout and "tune" in out.stdout


PUBLIC = [
    "steplaw_opt",
    "steplaw_opt.priors",
    "steplaw_opt.samplers",
    "steplaw_opt.objectives",
    "steplaw_opt.tune",
    "steplaw_opt.tracking",
    "steplaw_opt.plots",
    "steplaw_opt.bench",
    "steplaw_opt.cli",
]


@pytest.mark.parametrize("package", PUBLIC)
def test_every_exported_name_exists_and_is_in_the_api_page(package: str) -> None:
    module = importlib.import_module(package)
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    section = page.split(f"## `{package}`", 1)
    assert len(section) == 2, f"docs/api.md has no section for {package}"
    text = section[1].split("\n## ", 1)[0]
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names {name}, which does not exist"
        assert f"`{name}`" in text, f"docs/api.md does not list {package}.{name}"


def test_study_and_trial_attribute_names_live_in_records() -> None:
    """Every ``steplaw.*`` study or trial attribute name the tuning workflow defines is named
    in :mod:`steplaw_opt._records` (beside the others), not in the module that writes it."""
    strays = []
    for path in sorted((ROOT / "steplaw_opt" / "tune").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
                continue
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            value = node.value.value
            if isinstance(value, str) and value.startswith("steplaw.") and names:
                strays.append(f"{path.name}: {names[0]} = {value!r}")
    assert strays == [], strays
    from steplaw_opt import _records
    from steplaw_opt.tune import _workers

    for name in ("ATTR_OWNER", "ATTR_LOST"):
        assert getattr(_workers, name) is getattr(_records, name)
    assert _records.ATTR_INTERRUPTED_BY == "steplaw.interrupted_by"
    assert _records.ATTR_OBJECTIVE == "steplaw.objective"


def test_the_readme_gives_the_quoting_rules_and_a_plain_postgresql_example() -> None:
    """The README's first lines stay the two commands; it has a short section on quoting a
    command template and a storage URL with a plain ``postgresql://`` example, and
    docs/security.md says the same."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    fence = lines.index("```bash")
    assert lines[fence + 1].startswith("python3 -m venv .venv && . .venv/bin/activate")
    assert lines[fence + 2] == ". .venv/bin/activate && ruff check . && python -m pytest -n 2"
    assert lines[fence + 3] == "```"
    heading = next((x for x in lines if x.startswith("#") and "quoting rules" in x), None)
    assert heading is not None, "README has no section on quoting rules"
    section = readme.split(heading, 1)[1].split("\n## ", 1)[0]
    assert "{metrics_file}" in section and "'{metrics_file}'" in section
    assert "{{" in section and "}}" in section  # literal braces
    assert re.search(r"--storage postgresql://\w", section), "no plain postgresql:// example"
    security = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    assert "quoting rules" in security and "postgresql://user@host/db" in security
    assert "postgresql+psycopg2://" not in readme.split("## Many workers", 1)[1].split("\n## ")[0]
