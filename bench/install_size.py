"""Install size and time of the core package against `rayrank[all]`, each in a fresh virtual environment.

    python bench/install_size.py [--constraints tests/constraints.txt]

Each row is a new venv: `pip install torch==2.13.0 .[EXTRA]` timed end to end (pip's wheel cache is
whatever this machine has: a warm cache measures resolving and unpacking, not the download), and the
size of its site-packages on disk. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def measure(target: str, constraints: str | None) -> tuple[float, int, int]:
    """Seconds to install `target` into a fresh venv, its site-packages bytes and distribution count."""
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "torch==2.13.0", target]
        if constraints:
            pip += ["-c", constraints]
        start = time.perf_counter()
        subprocess.run(pip, check=True, cwd=REPO)
        seconds = time.perf_counter() - start
        site = next(env.glob("lib/python*/site-packages"))
        freeze = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                                text=True, check=True).stdout.splitlines()
        return seconds, folder_bytes(site), len(freeze)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--constraints", default=None, help="pip constraints file (default: none)")
    parser.add_argument("--extras", default="core,openvino,funnel,lab,all",
                        help="comma-separated: core (no extra) and extras of pyproject.toml (default: %(default)s)")
    args = parser.parse_args(argv)
    print("| install | seconds | site-packages MB | distributions |")
    print("|---|---|---|---|")
    for extra in args.extras.split(","):
        target = "." if extra == "core" else f".[{extra}]"
        seconds, size, count = measure(target, args.constraints)
        print(f"| `pip install torch==2.13.0 \"{target}\"` | {seconds:.0f} | {size / 2**20:,.0f} | {count} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
