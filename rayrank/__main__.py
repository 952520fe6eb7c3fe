"""`python -m rayrank COMMAND ...`: the console script, for environments without it on PATH."""

import sys

from rayrank.cli import main

if __name__ == "__main__":
    sys.exit(main())
