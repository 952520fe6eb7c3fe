"""Arrows run one way: the engine (`rayrank/`) never imports Ray nor its glue; `jobs/` and `ray_app/`
(installed as `rayrank.jobs` and `rayrank.ray_app`) import the engine, never each other, and no module
of ours takes part in an import cycle (function-level imports included)."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = {"rayrank": REPO / "rayrank", "rayrank.jobs": REPO / "jobs", "rayrank.ray_app": REPO / "ray_app"}
GLUE = ("rayrank.jobs", "rayrank.ray_app")

CHECK = """
import importlib, pkgutil, sys
import rayrank
for module in pkgutil.walk_packages(rayrank.__path__, "rayrank."):
    if not module.name.startswith(("rayrank.jobs", "rayrank.ray_app")):
        importlib.import_module(module.name)
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
assert not loaded, f"importing rayrank loaded {loaded[:5]}"
print("ok")
"""


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports anywhere in its file (`from X import y` counts X.y if it is a module)."""
    out = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_no_rayrank_module_imports_ray():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_engine_never_imports_the_glue_and_the_glues_never_import_each_other():
    wrong = []
    for name, targets in graph().items():
        side = next((g for g in GLUE if name == g or name.startswith(g + ".")), "rayrank")
        for target in targets:
            other = next((g for g in GLUE if target == g or target.startswith(g + ".")), "rayrank")
            if other != "rayrank" and other != side:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_no_import_cycles():
    edges = graph()
    # Package __init__ files re-export their submodules; a submodule importing its own package is not a cycle.
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
