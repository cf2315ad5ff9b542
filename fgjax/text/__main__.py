"""`python -m fgjax.text`, kept working: it runs `fgjax text` (fgjax/cli/text.py)."""

# Through the dispatcher, which answers in one line when the method package is missing.
import sys

from fgjax.cli import main

if __name__ == "__main__":
    sys.exit(main(["text", *sys.argv[1:]]))
