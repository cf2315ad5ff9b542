"""`python -m fgjax.describe`, kept working: it runs `fgjax describe` (fgjax/cli/describe.py)."""

# Through the dispatcher, which answers in one line when the method package is missing.
import sys

from fgjax.cli import main

if __name__ == "__main__":
    sys.exit(main(["describe", *sys.argv[1:]]))
