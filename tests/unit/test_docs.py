"""The docs: the site builds strictly, the marked code blocks run, and no page holds a local path or a note about
how the work was done.

Which code blocks run (README.md and docs/**/*.md): a fenced block right after a line `<!-- test -->` runs;
`<!-- test: needs PATH -->` runs it only when PATH (from the repository root) exists, and skips it otherwise (the
quick start's `rayrank eval runs/sample`, which CI's quick-start job writes first). A `bash` block runs line by
line from the repository root in a shell (a line ending in `\\` continues; `#` comments are dropped); a `python`
block runs as one script in a fresh interpreter. Each must exit 0. Mark only commands that run offline in seconds:
nothing that starts Ray or a server, or reads data outside the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARK = re.compile(r"^<!--\s*test(?::\s*needs\s+(?P<needs>\S+))?\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)(?P<lang>[\w+-]*)")

# Local paths and sentences about how the work was done: the docs speak of the product only.
FORBIDDEN = [
    r"/work/", r"/root/", r"/Users/", r"flock\s+/tmp", r"/tmp/\S*\.lock",
    r"\bthis session\b", r"\b(earlier|previous|last|other) sessions?\b", r"\bsessions?'s?\b",
    r"\banother developer", r"\bother (engineers|developers)\b", r"\bdeveloper's\b",
    r"\bthe issue\b", r"\bissue #\d+", r"\bas (the|this) issue asks\b",
    r"\bno GPU was (lent|available)\b", r"\bwhile this was (built|written)\b", r"\bmeasured here\b",
]


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", HF_HUB_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this interpreter's `rayrank`
    return env


def marked_blocks() -> list[tuple[str, str | None, str, str]]:
    """(id, needs, language, code) of every marked block."""
    blocks = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        previous, i = "", 0
        while i < len(lines):
            opening = FENCE.match(lines[i])
            if not opening:
                if lines[i].strip():
                    previous = lines[i].strip()
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == opening["fence"])
            if mark := MARK.match(previous):
                indent = len(opening["indent"])
                code = "\n".join(line[indent:] for line in lines[i + 1:end])
                blocks.append((f"{page.relative_to(ROOT)}:{i + 1}", mark["needs"], opening["lang"], code))
            previous, i = "", end + 1
    return blocks


def shell_commands(code: str) -> list[str]:
    commands, current = [], ""
    for line in code.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            commands.append(current.strip())
        current = ""
    return commands


BLOCKS = marked_blocks()


def test_some_blocks_are_marked():
    assert {lang for _, _, lang, _ in BLOCKS} >= {"bash", "python"}, BLOCKS


@pytest.mark.parametrize(("needs", "lang", "code"), [b[1:] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_marked_block_runs(needs, lang, code, tmp_path):
    if needs and not (ROOT / needs).exists():
        pytest.skip(f"needs {needs} (written by the quick start's rerank job)")
    if lang == "python":
        script = tmp_path / "block.py"
        script.write_text(code)
        commands = [[sys.executable, str(script)]]
    elif lang in ("bash", "sh", "shell"):
        commands = [["bash", "-c", command] for command in shell_commands(code)]
    else:
        raise AssertionError(f"a marked block must be bash or python, not {lang!r}")
    for command in commands:
        done = subprocess.run(command, check=False, cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=120)
        output = done.stdout[-2000:] + done.stderr[-4000:]
        assert done.returncode == 0, f"{command[-1]} exited {done.returncode}:\n{output}"


def test_site_builds_strictly(tmp_path):
    """Broken links, missing pages and anchors, and a failing reference generator all fail the build."""
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
             "-d", str(tmp_path / "site")]
    done = subprocess.run(build, check=False, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    config = (tmp_path / "site" / "reference" / "configuration" / "index.html").read_text()
    from rayrank.cli import COMMANDS

    for name in COMMANDS:
        assert f"rayrank {name}" in cli
    for model in ("EngineConfig", "RerankJobConfig", "FunnelConfig", "ServeArgs", "SearchArgs", "DistillConfig"):
        assert f'id="{model.lower()}"' in config
    assert str(ROOT) not in cli + config, "a local path leaked into the generated reference"


@pytest.mark.parametrize("page", PAGES + [ROOT / "mkdocs.yml"], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_local_paths_or_work_notes(page):
    text = page.read_text()
    found = [(text.count("\n", 0, m.start()) + 1, m.group(0)) for pattern in FORBIDDEN
             for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
    assert not found, f"{page.relative_to(ROOT)}: " + ", ".join(f"line {n}: {s!r}" for n, s in found)


def test_readme_is_a_door():
    """Short, with CI's install and quick-start commands verbatim, and every relative link resolving."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in [line for line in ci if line.startswith(("pip install", "rayrank rerank"))]:
        assert f"\n{command}\n" in readme, f"the README does not show CI's command: {command}"
    assert "\npython -m pytest\n" in readme
    for page in (ROOT / "README.md", ROOT / "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+:", target):
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
