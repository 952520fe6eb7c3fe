"""`jobs/` and `ray_app/` install inside the rayrank namespace: from any directory, `rayrank.jobs` and
`rayrank.ray_app` import and run with `python -m`, while `import jobs` is never ours."""

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_every_package_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"rayrank": REPO / "rayrank", **{k: REPO / v for k, v in setuptools["package-dir"].items()}}
    found = set()
    for package, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            found.add(".".join((package, *init.parent.relative_to(folder).parts)))
    assert found == set(setuptools["packages"])


def test_glue_imports_under_rayrank_from_any_directory(tmp_path):
    done = run("import rayrank.jobs.rerank, rayrank.ray_app.config, rayrank.ray_app.cli; print('ok')", tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    for name in ("jobs", "ray_app"):
        done = run(f"import {name}", tmp_path)
        assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr, (name, done.stderr[-500:])


def test_python_m_entry_points(tmp_path):
    for module in ("rayrank", "rayrank.jobs.rerank", "rayrank.jobs.index"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (module, done.stderr[-1000:])
