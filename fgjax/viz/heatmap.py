"""`python -m fgjax.viz.heatmap`, kept working: it runs `fgjax heatmap` (fgjax/cli/heatmap.py)."""

# Through the dispatcher, which answers in one line when the method package is missing.
import sys

from fgjax.cli import main

if __name__ == "__main__":
    sys.exit(main(["heatmap", *sys.argv[1:]]))
