"""The package's layers: no module imports another that imports it back (at any depth), and reading results
(`masklam report`) needs neither torch nor MuJoCo."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import masklam

PACKAGE = Path(masklam.__file__).resolve().parent
REPO = PACKAGE.parent

# Run first in a child process: any import of torch or mujoco (or a module of theirs) fails loudly.
BLOCK_HEAVY = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "mujoco"):
            raise ImportError(f"{name} imported where it must not be")

sys.meta_path.insert(0, Blocked())
"""


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the masklam modules it imports, at module level or inside functions alike (a function's import
    runs whenever the function does, so it ties the layers as much as one at the top)."""
    modules = module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..data import y
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base not in modules:
                    continue
                for alias in node.names:  # `from masklam.data import collect` imports the module masklam.data.collect
                    graph[name].add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node] - {node}:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "masklam.report.tables" in graph["masklam.pipeline.run"]  # run_recipe imports write_report in its body
    assert "masklam.pipeline.layout" in graph["masklam.report.tables"]


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def run_blocked(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_HEAVY + script], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_the_blocker_blocks():
    result = run_blocked("import masklam.train.lam", REPO)
    assert result.returncode != 0 and "torch imported where it must not be" in result.stderr


def test_report_reads_a_run_folder_without_torch_or_mujoco(tmp_path):
    from masklam.pipeline.layout import grid
    from masklam.pipeline.recipe import load_recipe, recipe_json

    root = tmp_path / "run"
    recipe = load_recipe("quickstart")
    root.mkdir()
    (root / "recipe.json").write_text(json.dumps(recipe_json(recipe)))
    (root / "steps.json").write_text(json.dumps({"collect low": {"settings": "x", "seconds": 60.0}}))
    for number, run in enumerate(grid(recipe)):
        run.folder(root).mkdir(parents=True)
        (run.folder(root) / "probe.json").write_text(json.dumps({"action_nmse": 0.5 + number / 10, "distractor_nmse": {}}))
        (run.folder(root) / "evaluate.json").write_text(json.dumps({"return_mean": 10.0, "normalised_by_collector": 0.1, "normalised_by_bc_actions": 0.5}))
    script = (
        "import masklam.report.tables\n"
        "from masklam.cli import main\n"
        f"sys.argv = ['masklam', 'report', {str(root)!r}, '--out', {str(tmp_path / 'report')!r}]\n"
        "try:\n    main()\nfinally:\n"
        "    print('heavy:', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mujoco', 'dm_control', 'metaworld')))\n"
    )
    result = run_blocked(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results[f"{recipe.name}/low"]["rows"]["lapo"]["n"] == 1
