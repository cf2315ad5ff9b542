"""`python -m fgjax.viz.rationale`, kept working: it runs `fgjax rationale`."""

# Through the dispatcher, which answers in one line when the method package is missing.
import sys

from fgjax.cli import main

if __name__ == "__main__":
    sys.exit(main(["rationale", *sys.argv[1:]]))
