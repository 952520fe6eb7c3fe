#!/usr/bin/env bash
# Refresh tests/constraints.txt: what a fresh machine resolves today for the README's install command, pinned.
# Run it on purpose (a new dependency, a wanted upgrade), then run the suite and commit the file with the result.
# Usage: bash tests/refresh_constraints.sh [PYTHON]   (default: python3; CI runs Python 3.11 on Linux x86-64)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
env=$(mktemp -d)
trap 'rm -rf "$env"' EXIT
"$python" -m venv "$env"
"$env/bin/pip" install -q --upgrade pip
"$env/bin/pip" install -q torch==2.13.0 -e ".[test]"
{
  echo "# The test environment, pinned: pip install torch==2.13.0 -e \".[test]\" -c tests/constraints.txt"
  echo "# Resolved on a fresh $("$env/bin/python" -c 'import platform; print(f"Python {platform.python_version()}, {platform.system()} {platform.machine()}")')"
  echo "# on $(date -u +%Y-%m-%d). Refresh on purpose with: bash tests/refresh_constraints.sh"
  # torch's local label (+cpu, +cu128) names the wheel index, not the version: the README's torch pin chooses it.
  "$env/bin/pip" freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' | sort -f
} > tests/constraints.txt
echo "wrote tests/constraints.txt ($(grep -vc '^#' tests/constraints.txt) packages)"
