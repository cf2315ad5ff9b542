"""`python -m fgjax.ddt`, kept working: it runs `fgjax ddt` (fgjax/cli/ddt.py)."""

# Through the dispatcher, which answers in one line when the method package is missing.
import sys

from fgjax.cli import main

if __name__ == "__main__":
    sys.exit(main(["ddt", *sys.argv[1:]]))
