"""`python -m fgjax.weights`, kept working: it runs `fgjax weights` (fgjax/cli/weights.py)."""

import sys

from fgjax.cli.weights import main

if __name__ == "__main__":
    sys.exit(main())
