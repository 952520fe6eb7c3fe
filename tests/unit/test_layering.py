"""The engine package never imports Ray: `jobs/` and `ray_app/` are the only Ray glue."""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import rayrank
for module in pkgutil.walk_packages(rayrank.__path__, "rayrank."):
    importlib.import_module(module.name)
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
assert not loaded, f"importing rayrank loaded {loaded[:5]}"
print("ok")
"""


def test_no_rayrank_module_imports_ray():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
