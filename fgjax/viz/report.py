"""`python -m fgjax.viz.report`, kept working: it runs `fgjax report` (fgjax/cli/report.py)."""

# Through the dispatcher, which answers in one line when the method package is missing.
import sys

from fgjax.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
